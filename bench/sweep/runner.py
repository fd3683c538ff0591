"""Running the points: one process per point on ``--jobs`` spawned workers, with a progress bar.

Kept apart from the experiments and reports so that the process handling (spawned
workers, exceptions returned as text) is one small module.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Sequence

from bench.des import DESConfig, PointResult, run_point


class PointError(RuntimeError):
    """A point failed in a worker (the scheduler under test is being edited, a bug...)."""


def _run(job: tuple[str, DESConfig]) -> tuple[str, DESConfig, PointResult | str]:
    # Exceptions are returned as text: some (e.g. ConfigError) do not survive unpickling
    # in the parent, which would hang the pool instead of failing the sweep.
    suite, cfg = job
    try:
        return suite, cfg, run_point(cfg)
    except Exception as exc:
        return suite, cfg, f"{type(exc).__name__}: {exc}"


class Progress:
    """A plain-text progress bar on stderr (no dependency): points done, elapsed, estimate."""

    def __init__(self, total: int, stream=sys.stderr, width: int = 30) -> None:
        self.total, self.stream, self.width = total, stream, width
        self.done = 0
        self.t0 = time.monotonic()

    def update(self, label: str) -> None:
        self.done += 1
        el = time.monotonic() - self.t0
        eta = el / self.done * (self.total - self.done)
        filled = int(self.width * self.done / max(1, self.total))
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(
            f"\r[{bar}] {self.done}/{self.total}  {el:6.0f} s elapsed, ~{eta:4.0f} s left  {label:<40.40}"
        )
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def run_jobs(
    jobs: Sequence[tuple[str, DESConfig]], procs: int, progress: bool = True
) -> list[tuple[str, DESConfig, PointResult]]:
    """Run every point, the most expensive first (so the two cores finish together)."""
    order = sorted(
        jobs,
        key=lambda j: (
            -(
                j[1].qps
                * j[1].duration_s
                * j[1].picker_replicas
                * (6 if j[1].workload.name == "shared-prefix" else 1)
            )
        ),
    )
    bar = Progress(len(order)) if progress else None
    out: list[tuple[str, DESConfig, PointResult]] = []

    def take(res: tuple[str, DESConfig, PointResult | str]) -> None:
        suite, cfg, r = res
        if isinstance(r, str):
            raise PointError(f"{suite} {cfg.policy} @ {cfg.qps:g} QPS failed: {r}")
        out.append((suite, cfg, r))
        if bar:
            bar.update(f"{suite} {cfg.policy} {cfg.qps:g}")

    if procs <= 1:
        for j in order:
            take(_run(j))
        return out
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:  # one import of the scheduler per worker: one version per run
        for res in pool.imap_unordered(_run, order):
            take(res)
    return out
