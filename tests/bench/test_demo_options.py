"""The demo's options: its report goes to an untracked folder, its ShareGPT phase to real data when given."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

from bench import demo
from bench.sharegpt import Conversation

ROOT = Path(__file__).resolve().parents[2]


def test_the_report_goes_to_an_ignored_folder_and_never_to_the_reference_copy():
    args = demo.parse_args([])
    assert args.out == Path(".infergate/demo")
    ignored = subprocess.run(["git", "check-ignore", "-q", str(args.out / "demo.md")], cwd=ROOT, check=False)
    assert ignored.returncode == 0
    assert demo.parse_args(["--out", "bench/results/demo"]).out == Path("bench/results/demo")


def test_the_sharegpt_phase_uses_real_conversations_when_loaded_and_the_fit_otherwise():
    args = demo.parse_args(["--phases", "sharegpt"])
    assert [p.name for p in demo.phases(args)] == ["ShareGPT-like"]
    assert demo.sharegpt_source(args) == "sharegpt-like"
    args.sharegpt_convs = [Conversation(f"real prompt {i} " * 4, 16, 30 + i) for i in range(3)]
    (phase,) = demo.phases(args)
    assert phase.name == "ShareGPT" and demo.sharegpt_source(args) == "sharegpt"
    items = list(itertools.islice(phase.workload(1), 3))
    assert sorted(it.max_tokens for it in items) == [30, 31, 32]
    assert demo.SHAREGPT_QPS["sharegpt"] < demo.SHAREGPT_QPS["sharegpt-like"]


def test_each_phase_has_its_own_time_scale_unless_the_flags_set_one_for_all():
    (sharegpt, prefix) = demo.phases(demo.parse_args([]))
    assert (sharegpt.time_scale, sharegpt.duration) == demo.PHASE_DEFAULTS["sharegpt"]
    assert (prefix.time_scale, prefix.duration) == demo.PHASE_DEFAULTS["prefix"]
    assert sharegpt.time_scale > prefix.time_scale  # streamed ShareGPT needs CPU headroom
    both = demo.phases(demo.parse_args(["--time-scale", "2", "--duration", "10"]))
    assert {(p.time_scale, p.duration) for p in both} == {(2.0, 10.0)}
