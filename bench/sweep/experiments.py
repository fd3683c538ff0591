"""What the sweep runs: the suites and points of the seed and replicas experiments, as DES configs.

Turning the command line into a list of ``(suite, DESConfig)`` jobs is kept apart from
running them and from reporting, so the point lists can be read (and tested) without
simulating anything.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from bench.des import DESConfig, WorkloadSpec

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
SEED_POINTS = [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
PREFIX_POINTS = [20, 40, 60, 80, 100]
LORA_POINTS = [100, 200, 300, 400, 500]
REPLICA_POINTS = {"sharegpt": [150, 250], "prefix": [30, 60]}
REPLICA_POLICIES = ["default", "gie-v1"]
REPLICA_CONFIGS = [  # (picker replicas, shared view, spread)
    (1, True, "round-robin"),
    (2, False, "round-robin"),
    (2, True, "round-robin"),
    (4, False, "round-robin"),
    (4, True, "round-robin"),
    (4, True, "random"),
]


@dataclass(frozen=True)
class Suite:
    """A family of points: one workload and criticality, across QPS and policies."""

    name: str
    title: str
    workload: WorkloadSpec
    points: tuple[float, ...]
    criticality: str = "Standard"


def seed_suites(args: argparse.Namespace) -> list[Suite]:
    groups = args.prefix_groups
    prefix = WorkloadSpec("shared-prefix", prefix_groups=groups)
    pts = tuple(args.points) if args.points else None
    # --sharegpt-data real: the ShareGPT suites draw real first turns (bench/sharegpt.py)
    real = getattr(args, "sharegpt_data", "fit") == "real"
    sharegpt = WorkloadSpec("sharegpt" if real else "sharegpt-like")
    label = "ShareGPT (real first turns)" if real else "ShareGPT-like"
    suites = [
        Suite(
            "sharegpt",
            f"{label}, Standard criticality (nothing shed)",
            sharegpt,
            pts or tuple(SEED_POINTS),
        ),
        Suite(
            "sharegpt-shed",
            f"{label}, every request Sheddable (admission control on)",
            sharegpt,
            pts or tuple(SEED_POINTS),
            "Sheddable",
        ),
        Suite(
            "prefix",
            f"Shared prefix: {groups} groups x 16 prompts, system 2048 + question 256, output 256",
            prefix,
            pts or tuple(PREFIX_POINTS),
        ),
        Suite(
            "lora",
            "LoRA: ShareGPT-like lengths, 12 adapters (Zipf s=1), max_loras 4",
            WorkloadSpec("lora"),
            pts or tuple(LORA_POINTS),
        ),
    ]
    if args.quick:
        quick = {
            "sharegpt": (100, 300, 600),
            "sharegpt-shed": (300, 600),
            "prefix": (30, 80),
            "lora": (100, 300),
        }
        suites = [replace(s, points=pts or quick[s.name]) for s in suites]
    if args.suites:
        keep = set(args.suites)
        suites = [s for s in suites if s.name in keep]
    return suites


def base_config(args: argparse.Namespace) -> DESConfig:
    return DESConfig(
        replicas=args.replicas,
        duration_s=args.duration,
        warmup_s=args.warmup,
        seed=args.seed,
        scrape_interval_s=args.scrape_interval,
        metrics_delay_s=args.metrics_delay,
        share_delay_s=args.share_delay,
        scheduler_config=args.profiles_data,
    )


def seed_jobs(args: argparse.Namespace) -> list[tuple[str, DESConfig]]:
    base = base_config(args)
    jobs = []
    for s in seed_suites(args):
        for q in s.points:
            for pol in args.policies:
                jobs.append(
                    (
                        s.name,
                        replace(
                            base, policy=pol, qps=float(q), workload=s.workload, criticality=s.criticality
                        ),
                    )
                )
    return jobs


def replica_jobs(args: argparse.Namespace) -> list[tuple[str, DESConfig]]:
    base = base_config(args)
    workloads = {
        "sharegpt": WorkloadSpec("sharegpt-like"),
        "prefix": WorkloadSpec("shared-prefix", prefix_groups=args.prefix_groups),
    }
    policies = [p for p in args.policies if p in REPLICA_POLICIES] or REPLICA_POLICIES
    configs = REPLICA_CONFIGS if not args.quick else [c for c in REPLICA_CONFIGS if c[0] != 2]
    jobs = []
    for name, wl in workloads.items():
        points = args.points or REPLICA_POINTS[name]
        if args.quick and not args.points:
            points = points[-1:]
        for q in points:
            for pol in policies:
                for n, shared, spread in configs:
                    for k in range(args.replica_seeds):
                        jobs.append(
                            (
                                name,
                                replace(
                                    base,
                                    policy=pol,
                                    qps=float(q),
                                    workload=wl,
                                    picker_replicas=n,
                                    shared_view=shared,
                                    spread=spread,
                                    seed=args.seed + k,
                                ),
                            )
                        )
    return jobs
