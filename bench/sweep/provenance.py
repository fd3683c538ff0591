"""What a run measured and where: the profiles read once, the scheduler commit, the machine, the meta.

A sweep takes minutes while the scheduler is edited in the same tree; each report must
say exactly which version it measured, so these facts are gathered in one place and
stored with the points (``make_meta``), which is also what ``--render`` reads back.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path


def snapshot_profiles(path: Path | None = None, attempts: int = 10, pause_s: float = 3.0) -> tuple[dict, str]:
    """Read and validate the scheduling profiles once, so every point of a run measures the same ones.

    The scheduler is developed in the same tree while sweeps run; a file caught mid-edit
    is retried a few times before giving up.
    """
    import hashlib

    import yaml

    from picker.scheduling import BUILTIN_CONFIG, ConfigError, load_config

    src = Path(path) if path else BUILTIN_CONFIG
    err: Exception | None = None
    for i in range(attempts):
        try:
            text = src.read_text()
            data = yaml.safe_load(text)
            load_config(data)  # validate now, not in a worker
            return data, hashlib.sha256(text.encode()).hexdigest()[:12]
        except (OSError, yaml.YAMLError, ConfigError) as exc:
            err = exc
            if i + 1 < attempts:
                time.sleep(pause_s)
    raise SystemExit(f"scheduling profiles {src} are not valid: {err}")


def scheduler_version(profiles_digest: str = "") -> str:
    """Which scheduler was measured: HEAD, whether picker/scheduling has local edits, profiles digest."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "picker/scheduling"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "unknown", ""
    digest = profiles_digest or "n/a"
    edits = " + uncommitted picker/scheduling edits" if dirty else ""
    return f"commit {head}{edits}, profiles.yaml sha256 {digest}"


def machine() -> str:
    return (
        f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def make_meta(args: argparse.Namespace, command: str, wall_s: float, scheduler: str) -> dict:
    """What a report states about its run; stored next to the points so reports can be re-rendered."""
    keys = (
        "replicas",
        "scrape_interval",
        "metrics_delay",
        "share_delay",
        "warmup",
        "duration",
        "seed",
        "replica_seeds",
        "jobs",
        "prefix_groups",
    )
    return {
        "command": command,
        "wall_s": wall_s,
        "machine": machine(),
        "scheduler": scheduler,
        **{k: getattr(args, k) for k in keys},
    }
