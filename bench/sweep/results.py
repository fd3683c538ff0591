"""The points of a run as JSON (``seed.json``, ``replicas.json``).

Written next to each report, so ``--render`` can rebuild the reports without simulating.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.des import DESConfig, PointResult, WorkloadSpec

from .provenance import machine


def save_results(path: Path, results, meta: dict) -> None:
    raw = [{"suite": s, **r.as_dict(), "config": c.label()} for s, c, r in results]
    path.write_text(json.dumps({"meta": meta, "points": raw}, indent=1, default=str) + "\n")


def load_results(path: Path) -> tuple[dict, list[tuple[str, DESConfig, PointResult]]]:
    """Read a results JSON back (also the first format, a bare list whose meta is in the .md header)."""
    import dataclasses
    import re

    data = json.loads(path.read_text())
    if isinstance(data, list):
        md = path.with_suffix(".md").read_text() if path.with_suffix(".md").exists() else ""

        def grab(pattern: str, default: str) -> str:
            m = re.search(pattern, md)
            return m.group(1) if m else default

        meta = {
            "command": grab(r"Command: `([^`]*)`", "infergate-bench sweep"),
            "wall_s": float(grab(r"wall time (\d+) s", "nan")),
            "machine": grab(r"Machine: ([^;]*);", machine()),
            "scheduler": grab(r"Scheduler: (.*?)\.  ", "unknown"),
        }
        points = data
    else:
        meta, points = data["meta"], data["points"]
    cfg_fields = {f.name for f in dataclasses.fields(DESConfig)} - {"workload", "engine"}
    res_fields = {f.name for f in dataclasses.fields(PointResult)}
    out = []
    for row in points:
        label = row["config"]
        cfg = DESConfig(
            **{k: v for k, v in label.items() if k in cfg_fields}, workload=WorkloadSpec(label["workload"])
        )
        for k, v in (
            ("scrape_interval", "scrape_interval_s"),
            ("metrics_delay", "metrics_delay_s"),
            ("share_delay", "share_delay_s"),
            ("warmup", "warmup_s"),
            ("duration", "duration_s"),
            ("seed", "seed"),
            ("replicas", "replicas"),
        ):
            meta.setdefault(k, label[v])
        meta.setdefault("jobs", 2)
        meta.setdefault("prefix_groups", 256)
        out.append((row["suite"], cfg, PointResult(**{k: v for k, v in row.items() if k in res_fields})))
    return meta, out
