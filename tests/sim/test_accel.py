"""Accelerator profiles: built-ins meet their sources, YAML extends them, engines differ by hardware."""

from __future__ import annotations

import random
import textwrap

import pytest

from sim.accel import ProfileError, load_profiles, profile, profiles
from sim.accel_check import check_profile
from sim.calibrate import run_poisson, saturation
from sim.config import EngineConfig
from sim.workloads import FixedLength


def test_h100_profile_is_todays_calibration():
    cfg = profile("h100-80gb").engine_config()
    assert cfg == EngineConfig()


def test_builtin_profiles_present_with_cost_and_source():
    profs = profiles()
    for name in ("h100-80gb", "a100-80gb", "l40s-48gb"):
        p = profs[name]
        assert p.cost_per_hour > 0 and p.source
    # 48 GB of GDDR6 leaves less than half the KV room of the 80 GB cards
    assert profs["l40s-48gb"].kv_capacity_tokens < 0.5 * profs["a100-80gb"].kv_capacity_tokens


@pytest.mark.parametrize("name", ["a100-80gb", "l40s-48gb"])
def test_derived_profiles_meet_their_source_points(name):
    profs = profiles()
    res = check_profile(profs[name], profs["h100-80gb"])
    assert {r.kind for r in res} == {"roofline_decode", "roofline_prefill", "kv_memory"}
    assert all(r.ok for r in res), [(r.what, r.expected, r.got) for r in res if not r.ok]


def test_a_wrong_hand_fit_fails_its_points(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        textwrap.dedent(
            """
            profiles:
              - name: fast-l40s
                memory_gib: 44.4
                hbm_tb_s: 0.864
                bf16_dense_tflops: 362
                kv_capacity_tokens: 54512
                step: {base_s: 0.0005, floor_s: 0.0056, n_base_s: 0.001, per_token_s: 20.0e-6,
                       per_ctx_s: 0.196e-6}
                points:
                  - {kind: roofline_decode, tolerance: 0.1}
                  - {kind: step_ms, tokens: 1, ctx: 0, value: 4.8}
            """
        )
    )
    profs = load_profiles(f)
    res = check_profile(profs["fast-l40s"], profs["h100-80gb"])
    assert [r.ok for r in res] == [False, True]  # H100 speed claimed on L40S bandwidth


def test_yaml_profile_derived_and_served(tmp_path):
    f = tmp_path / "extra.yaml"
    f.write_text(
        "profiles:\n"
        "  - {name: h200, memory_gib: 139.8, hbm_tb_s: 4.8, bf16_dense_tflops: 989, derive_from: h100-80gb,"
        " cost_per_hour: 4.5}\n"
    )
    profs = load_profiles(f)
    h200, h100 = profs["h200"], profs["h100-80gb"]
    assert h200.kv_capacity_tokens > 1.8 * h100.kv_capacity_tokens
    assert h200.step.floor_s < h100.step.floor_s
    assert h200.step.per_token_s == pytest.approx(h100.step.per_token_s)
    assert h200.engine_config().kv_capacity_tokens == h200.kv_capacity_tokens


@pytest.mark.parametrize(
    "body, msg",
    [
        ("profiles: [{name: x, memory_gib: 10, hbm_tb_s: 1, bf16_dense_tflops: 1}]", "derive_from"),
        (
            "profiles: [{name: x, memory_gib: 10, hbm_tb_s: 1, bf16_dense_tflops: 1, derive_from: nope}]",
            "nope",
        ),
        ("profiles: [{name: x, memory_gib: -1, hbm_tb_s: 1, bf16_dense_tflops: 1}]", "memory_gib"),
        ("profiles: [{memory_gib: 1}]", "name"),
    ],
)
def test_malformed_profiles_are_named(tmp_path, body, msg):
    f = tmp_path / "p.yaml"
    f.write_text(body)
    with pytest.raises(ProfileError, match=msg):
        load_profiles(f)


def test_slower_hardware_serves_slower_and_saturates_lower():
    profs = profiles()
    base = EngineConfig(enable_lora=False)
    itl = {}
    for name in ("h100-80gb", "a100-80gb", "l40s-48gb"):
        cfg = profs[name].engine_config(base)
        r = run_poisson(cfg, FixedLength(580, 250, random.Random(1)), 4.0, n_requests=300, seed=1)
        itl[name] = r.itl_percentile(50)
    assert itl["h100-80gb"] < itl["a100-80gb"] < itl["l40s-48gb"]
    sat = {
        n: saturation(profs[n].engine_config(), rate=60.0, duration=90.0, warmup=30.0)["req_per_s"]
        for n in ("h100-80gb", "l40s-48gb")
    }
    assert sat["l40s-48gb"] < 0.6 * sat["h100-80gb"]


def test_launcher_pods_file_sets_each_pods_accelerator(tmp_path):
    from sim.__main__ import build_parser, pod_specs

    f = tmp_path / "pods.yaml"
    f.write_text("- {name: a, port: 1, accelerator: a100-80gb}\n- {name: b, port: 2}\n")
    specs = pod_specs(build_parser().parse_args(["--pods-file", str(f), "--accelerator", "l40s-48gb"]))
    assert specs[0].engine.kv_capacity_tokens == profile("a100-80gb").kv_capacity_tokens
    assert specs[1].engine.kv_capacity_tokens == profile("l40s-48gb").kv_capacity_tokens
    assert specs[1].engine.slowdown == EngineConfig().slowdown


def test_demo_mixed_pool_flag():
    from bench import demo
    from bench.mixed import mixed_pool

    args = demo.parse_args(["--mixed-pool"])
    assert args.mixed_pool and args.profile == "predicted-latency"
    assert demo.parse_args([]).profile == "default"
    pods = mixed_pool()
    assert [p.accelerator for p in pods] == ["h100-80gb", "a100-80gb", "a100-80gb", "l40s-48gb"]
    assert pods[3].cost_per_hour == profile("l40s-48gb").cost_per_hour and pods[0].lora_adapters
