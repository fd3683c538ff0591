"""Simulated SGLang pods: the same engine behind SGLang's metrics page and info endpoints."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.parse import parse
from sim.__main__ import build_parser, pod_specs
from sim.engine import EngineConfig, SimRequest
from sim.server import PodSpec, SimCluster, SimPod

MODEL = "meta-llama/Llama-2-7b-hf"


async def test_sglang_pod_serves_sglang_metrics_info_and_completions():
    spec = PodSpec(
        name="sgl-0", flavor="sglang", engine=EngineConfig(max_num_seqs=2, max_num_batched_tokens=4096)
    )
    async with SimCluster([spec]) as c, aiohttp.ClientSession() as http:
        pod = c.pods[0]
        url = pod.url
        for i in range(6):  # 2 run, 4 wait (long outputs: they stay while we look)
            pod.submit(SimRequest(f"r{i}", 300, 4000))
        await asyncio.sleep(0.3)
        page = await (await http.get(url + "/metrics")).text()
        fams = {f.name: f for f in text_string_to_metric_families(page)}  # the oracle accepts the page
        assert "sglang:num_queue_reqs" in fams and not any(n.startswith("vllm:") for n in fams)
        labels = fams["sglang:num_running_reqs"].samples[0].labels
        assert labels["model_name"] == MODEL and {"engine_type", "tp_rank", "pp_rank"} <= set(labels)
        pm = parse(page.encode())
        assert (pm.engine, pm.model, pm.running, pm.waiting) == ("sglang", MODEL, 2, 4)
        assert pm.kv_capacity_tokens == pod.cfg.num_gpu_blocks * pod.cfg.block_size
        assert 0 < pm.kv_usage == pytest.approx(pod.engine.kv_usage)
        info = await (await http.get(url + "/get_model_info")).json()
        assert info["model_path"] == MODEL and info["is_generation"] is True
        (load,) = await (await http.get(url + "/get_load")).json()
        assert load["num_reqs"] == 6 and load["num_waiting_reqs"] == 4 and load["num_tokens"] > 0
        models = await (await http.get(url + "/v1/models")).json()
        assert models["data"][0]["id"] == MODEL and models["data"][0]["owned_by"] == "sglang"
        for i in range(6):
            pod.engine.abort(f"r{i}")
        r = await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3})
        assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 3


async def test_vllm_stays_the_default_and_its_pods_have_no_sglang_endpoints():
    async with SimCluster(n=1) as c, aiohttp.ClientSession() as http:
        url = c.pods[0].url
        assert parse((await (await http.get(url + "/metrics")).text()).encode()).engine == "vllm"
        assert (await http.get(url + "/get_load")).status == 404


def test_cli_engine_flag_and_pods_file(tmp_path):
    specs = pod_specs(build_parser().parse_args(["--engine", "sglang", "--pods", "2"]))
    assert [s.flavor for s in specs] == ["sglang", "sglang"]
    assert [s.flavor for s in pod_specs(build_parser().parse_args([]))] == ["vllm"]
    f = tmp_path / "pods.yaml"
    f.write_text("- {name: a, port: 9001}\n- {name: b, port: 9002, engine: sglang}\n")
    specs = pod_specs(build_parser().parse_args(["--pods-file", str(f)]))
    assert [(s.name, s.flavor) for s in specs] == [("a", "vllm"), ("b", "sglang")]
    with pytest.raises(ValueError, match="flavor"):
        SimPod(PodSpec(flavor="tgi"))
