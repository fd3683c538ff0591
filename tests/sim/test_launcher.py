"""``infergate-sim`` flags, env fallbacks and pods files."""

from __future__ import annotations

import json

from sim.__main__ import build_parser, pod_specs


def test_consecutive_ports_and_env_fallback(monkeypatch):
    monkeypatch.setenv("INFERGATE_SIM_PODS", "3")
    monkeypatch.setenv("INFERGATE_SIM_LORA_ADAPTERS", "a,b")
    args = build_parser().parse_args(["--base-port", "9000", "--time-scale", "10", "--max-loras", "2"])
    specs = pod_specs(args)
    assert [s.port for s in specs] == [9000, 9001, 9002]
    assert [s.name for s in specs] == ["sim-0", "sim-1", "sim-2"]
    assert all(s.lora_adapters == ["a", "b"] and s.time_scale == 10 for s in specs)
    assert specs[0].engine.max_loras == 2


def test_port_list_and_pods_file(tmp_path):
    args = build_parser().parse_args(["--ports", "7001,7005"])
    assert [s.port for s in pod_specs(args)] == [7001, 7005]
    f = tmp_path / "pods.yaml"
    f.write_text("- {name: a, port: 7100, model: m1, lora_adapters: [x]}\n- {name: b, port: 7101}\n")
    specs = pod_specs(build_parser().parse_args(["--pods-file", str(f), "--model", "base"]))
    assert [(s.name, s.port, s.model, s.lora_adapters) for s in specs] == [
        ("a", 7100, "m1", ["x"]),
        ("b", 7101, "base", []),
    ]
    assert specs[0].engine.model == "m1"
    j = tmp_path / "pods.json"
    j.write_text(json.dumps({"pods": [{"name": "c", "port": 7200, "lora_adapters": "p,q"}]}))
    (s,) = pod_specs(build_parser().parse_args(["--pods-file", str(j)]))
    assert s.lora_adapters == ["p", "q"]
