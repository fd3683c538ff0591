"""``infergate-bench peers`` without the peers: InferGate and Envoy round-robin, a few requests.

The routers themselves are only installed by ``make peers`` / ``infergate-bench peers``;
CI never downloads them. The end-to-end test runs the real stack (NATS, Envoy, pickers,
collectors, simulated pods) through the command's own entry point.
"""

from __future__ import annotations

import itertools
import math
import os

from bench.loadgen import RequestRecord
from bench.peers import cli
from bench.peers.install import PeerEnv
from bench.peers.measure import CpuMeter, cpu_seconds, process_tree
from bench.peers.pods import Pod
from bench.peers.report import Outcome, goals, ratio, table
from bench.peers.routes import Route, all_routes, models_yaml, peer_argv
from bench.peers.workloads import multi_turn
from sim.openai import filler_text


def test_multi_turn_resends_the_whole_conversation_with_the_pods_answers():
    items = multi_turn(seed=3, time_scale=1.0, qps=20.0, duration_wall=30.0)
    assert items and all(a.arrival <= b.arrival for a, b in itertools.pairwise(items))
    by_conv: dict[str, list] = {}
    for it in items:
        by_conv.setdefault(it.prompt.split("\n", 1)[0], []).append(it)
    multi = [turns for turns in by_conv.values() if len(turns) > 1]
    assert multi
    for turns in multi:
        for prev, nxt in itertools.pairwise(turns):
            assert nxt.prompt.startswith(prev.prompt + filler_text(0, prev.max_tokens) + "\n[user] ")
            assert nxt.arrival > prev.arrival
    # The default think time re-sends conversations within a run's few H100 seconds (6 here).
    short = multi_turn(seed=1, time_scale=4.0, qps=60.0, duration_wall=24.0)
    firsts = {it.prompt.split("\n", 1)[0] for it in short}
    assert len(short) > len(firsts)


def test_routes_and_peer_command_lines():
    names = [r.name for r in all_routes()]
    assert names[:2] == ["InferGate", "Envoy round-robin"] and len(names) == 9
    assert [r.name for r in all_routes(peers=False)] == names[:2]
    pods = [Pod("p0", 8001, None), Pod("p1", 8002, None)]  # type: ignore[arg-type]
    argv = peer_argv(
        Route("x", "vllm", "consistent_hash"), PeerEnv(root=__import__("pathlib").Path("/v")), 9, 10, pods
    )
    assert argv[0] == "/v/bin/vllm-router" and argv[argv.index("--policy") + 1] == "consistent_hash"
    assert argv[argv.index("--worker-urls") + 1 : argv.index("--worker-urls") + 3] == [
        pods[0].url,
        pods[1].url,
    ]
    assert Route("s", "sglang", "cache_aware").flavor == "sglang" and Route("v", "vllm").flavor == "vllm"
    assert "modelName: lora-1" in models_yaml(("lora-0", "lora-1"))


def test_cpu_meter_counts_this_process():
    assert os.getpid() in process_tree(os.getpid())
    meter = CpuMeter({"me": os.getpid()})
    meter.start()
    x = 0
    for i in range(2_000_000):
        x += i
    used = meter.stop()
    assert used["me"] > 0 and cpu_seconds(os.getpid()) > 0 and cpu_seconds(2**22 + 12345) == 0.0


def test_ratios_and_goals_say_who_is_better():
    assert ratio(10.0, 12.0, higher_better=True) == "1.20"  # InferGate 12 req/s vs 10
    assert ratio(0.2, 0.1, higher_better=False) == "2.00"  # InferGate's p90 TTFT half the peer's
    assert ratio(math.nan, 1.0, True) == "-"
    ig = Outcome("w", "InferGate", [{"req_per_s": 10.0, "ttft_p90_s": 0.1, "ntpot_p90_s": 0.02, "ok": 5}])
    peer = Outcome(
        "w", "vllm-router cache_aware", [{"req_per_s": 11.0, "ttft_p90_s": 0.2, "ntpot_p90_s": 0.02}]
    )
    failed = Outcome("w", "sglang-router power_of_two", failure="TimeoutError: never served")
    (line,) = goals({"w": [ig, peer, failed]})
    assert "behind on vllm-router cache_aware req/s" in line and "2.00x" in line
    rows = table([ig, peer, failed])
    assert any("failed: TimeoutError" in r for r in rows)
    # Requests cut at the drain cap still count in TTFT (a lower bound if no token came).
    served = RequestRecord(0, 0.0, sent_at=0.0, status=200, ttft_s=0.05, latency_s=1.0)
    cut_late = RequestRecord(1, 1.0, sent_at=1.0, error="cancelled", ttft_s=0.07)
    cut_early = RequestRecord(2, 2.0, sent_at=2.0, error="cancelled")
    unsent = RequestRecord(3, 3.0)
    assert cli.censored_ttfts([served, cut_late, cut_early, unsent], wall_s=10.0) == [0.05, 0.07, 8.0]


async def test_peers_command_end_to_end_without_the_peers(tmp_path, capsys):
    out = tmp_path / "peers.md"
    args = cli.parse_args(
        ["--no-peers", "--workloads", "prefix-1x", "--repetitions", "1", "--duration", "2",
         "--time-scale", "2", "--max-requests", "6", "--idle", "0.5", "--out", str(out),
         "--work-dir", str(tmp_path / "w")]
    )  # fmt: skip
    assert await cli.amain(args) == 0
    text = out.read_text()
    assert "| InferGate |" in text and "| Envoy round-robin |" in text and "failed" not in text
    assert (
        "| sglang-router" not in text
        and "| vllm-router" not in text
        and "Command:" in text
        and "load average" in text
    )
    ig = next(line for line in text.splitlines() if line.startswith("| InferGate |"))
    assert ig.split("|")[8].strip().startswith("0")  # no errors
    assert "route CPU" in capsys.readouterr().out
    assert "Fixed cost:" in text and "marginal:" in text  # InferGate's idle metering and the split
