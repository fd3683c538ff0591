"""LoRA adapters on the real stack: real nats-server, two collectors, the picker behind the real Envoy.

An adapter requested for 2 replicas is loaded on exactly 2 of 4 simulated pods that lacked
it (two nodes, one collector each, coordinating through the JetStream KV bucket), and
requests naming it then succeed through Envoy and the picker, served by those 2 pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from collector.service import Collector, CollectorConfig
from collector.targets import Target
from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions
from picker.envoy.process import EnvoyProcess
from picker.service import Picker
from shared.natsconn import NatsOptions
from shared.natsd import free_port
from sim.server import PodSpec, SimCluster
from tests.support.pickers import loopback_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

POOL = "pool"


def collector_for(node: str, pods, url: str, spec_path, **kw) -> Collector:
    targets = [Target("default", POOL, p.name, "127.0.0.1", p.port, node) for p in pods]
    return Collector(
        CollectorConfig(
            node_name=node,
            collector_name=f"c-{node}",
            nats=NatsOptions(servers=[url], name=f"collector-{node}"),
            targets=targets,
            ops_port=None,
            models_interval=0.1,
            adapters_file=str(spec_path),
            adapter_sync_interval=0.2,
            adapter_drain=0.3,
            targets_poll_interval=0.2,
            **kw,
        )
    )


@contextlib.asynccontextmanager
async def gateway(url: str, envoy_binary: str, **picker_kw) -> AsyncIterator[tuple[Picker, str]]:
    p = Picker(loopback_config(pool_name=POOL, nats=NatsOptions(servers=[url], name="picker"), **picker_kw))
    await p.start()
    opts = BootstrapOptions(
        pickers=(p.address,),
        picker_health_port=p.health_port,
        listen_address="127.0.0.1",
        listen_port=free_port(),
        admin_port=free_port(),
    )
    try:
        await p.wait_ready(15)
        async with EnvoyProcess(build_bootstrap(opts), envoy_binary):
            yield p, f"http://127.0.0.1:{opts.listen_port}"
    finally:
        await p.stop(grace=0.2)


async def complete(http: aiohttp.ClientSession, url: str, model: str) -> tuple[int, str, str]:
    body = {"model": model, "prompt": "hello adapters", "max_tokens": 4}
    async with http.post(f"{url}/v1/completions", json=body) as r:
        text = await r.text()
        return r.status, r.headers.get("x-gateway-destination-endpoint-served", ""), text


async def test_adapter_for_two_replicas_lands_on_exactly_two_pods_and_serves(
    nats_server, envoy_binary, tmp_path
) -> None:
    spec = tmp_path / "adapters.yaml"
    spec.write_text("adapters:\n  - {name: sql-lora, source: /adapters/sql, replicas: 2}\n")
    specs = [PodSpec(name=f"vllm-{i}") for i in range(4)]
    async with SimCluster(specs) as cluster:
        pods = cluster.pods
        assert not any("sql-lora" in p.loras for p in pods)  # nobody has it to begin with
        a = collector_for("node-a", pods[:2], nats_server.url, spec)
        b = collector_for("node-b", pods[2:], nats_server.url, spec)
        await asyncio.gather(a.start(), b.start())
        try:
            await wait_until(lambda: sum("sql-lora" in p.loras for p in pods) == 2, 20, "2 replicas")
            # more passes of both collectors: the count never overshoots
            passes = (a.adapters.passes, b.adapters.passes)
            await wait_until(
                lambda: a.adapters.passes >= passes[0] + 5 and b.adapters.passes >= passes[1] + 5, 20
            )
            holders = [p for p in pods if "sql-lora" in p.loras]
            assert len(holders) == 2
            async with gateway(nats_server.url, envoy_binary) as (picker, url):
                addrs = {p.address for p in holders}
                await wait_until(
                    lambda: (
                        all(
                            "sql-lora" in picker.view.endpoints[x].snapshot.served_models
                            for x in addrs
                            if x in picker.view.endpoints
                        )
                        and addrs <= set(picker.view.endpoints)
                    ),
                    15,
                    "the picker sees where the adapter is",
                )
                async with aiohttp.ClientSession() as http:
                    replies = [await complete(http, url, "sql-lora") for _ in range(12)]
                    for status, served, text in replies:
                        assert status == 200, text
                        assert json.loads(text)["model"] == "sql-lora"
                        assert served in addrs, (served, addrs)
                    # an unload never interrupts a running request: take the adapter out of
                    # the spec while a long request for it runs on one of the holders
                    body = {"model": "sql-lora", "prompt": "a long one", "max_tokens": 250}
                    long = asyncio.ensure_future(http.post(f"{url}/v1/completions", json=body))
                    await wait_until(lambda: any("sql-lora" in p.engine.running_loras for p in holders), 10)
                    busy = next(p for p in holders if "sql-lora" in p.engine.running_loras)
                    spec.write_text("adapters: []\n")
                    released_while_running = False
                    while not long.done():
                        if "sql-lora" in busy.engine.running_loras:
                            assert "sql-lora" in busy.loras, "unloaded under a running request"
                            draining = bool(a.adapters._draining or b.adapters._draining)
                            released_while_running = released_while_running or draining
                        await asyncio.sleep(0.01)
                    assert released_while_running  # the release had begun before it finished
                    resp = await long
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["usage"]["completion_tokens"] == 250
                    resp.release()
            await wait_until(lambda: not any("sql-lora" in p.loras for p in pods), 15, "unloaded once idle")
        finally:
            await asyncio.gather(a.stop(), b.stop())


# -- progressive rollout ------------------------------------------------------------------------

ROLLOUT = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata:
  name: chat-rollout
  annotations:
    infergate.io/rollout: "true"
    infergate.io/rollout-steps: "20,50,100"
    infergate.io/rollout-hold: "{hold}"
    infergate.io/rollout-min-requests: "3"
    infergate.io/rollout-min-errors: "2"
    infergate.io/rollout-max-latency-ratio: "50"
spec:
  poolRef: {{name: pool}}
  rules:
    - matches: [{{model: {{type: Exact, value: chat}}}}]
      targets: [{{modelRewrite: chat-v1}}, {{modelRewrite: chat-v2}}]
"""


def picker_config(url: str, models: str, name: str, grpc_port: int = 0, health_port: int = 0):
    from picker.sharing import SharingSettings

    return loopback_config(
        pool_name=POOL,
        config_files=[models],
        replica_name=name,
        grpc_port=grpc_port,
        grpc_health_port=health_port,
        nats=NatsOptions(servers=[url], name=name, reconnect_wait=0.1),
        sharing=SharingSettings(replica=name, peer_timeout_s=0),
    )


class Load:
    """Requests for ``chat`` through the gateway, 3 at a time, until stopped; replies kept in order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.replies: list[tuple[int, str]] = []  # (status, target model served or error text)
        self.task: asyncio.Task | None = None

    async def _worker(self, http: aiohttp.ClientSession) -> None:
        while True:
            body = {"model": "chat", "prompt": "roll me out", "max_tokens": 3}
            try:
                async with http.post(f"{self.url}/v1/completions", json=body) as r:
                    text = await r.text()
                    served = json.loads(text).get("model", "") if r.status == 200 else text[:120]
                    self.replies.append((r.status, served))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.replies.append((0, repr(exc)))
                await asyncio.sleep(0.05)

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            await asyncio.gather(*(self._worker(http) for _ in range(3)))

    def __enter__(self) -> Load:
        self.task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc) -> None:
        assert self.task is not None
        self.task.cancel()


async def record(url: str) -> dict:
    import nats as nats_client

    nc = await nats_client.connect(url)
    try:
        kv = await nc.jetstream().key_value("INFERGATE_ROLLOUTS")
        keys = await kv.keys()
        assert len(keys) == 1, keys
        return json.loads((await kv.get(keys[0])).value)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def rollout_stack(nats_url, envoy_binary, tmp_path, hold: float, fail: bool):
    models = tmp_path / "models.yaml"
    models.write_text(ROLLOUT.format(hold=hold))
    specs = [
        PodSpec(
            name=f"vllm-{i}", lora_adapters=["chat-v1", "chat-v2"], fail_adapters=["chat-v2"] if fail else []
        )
        for i in range(2)
    ]
    async with SimCluster(specs) as cluster:
        targets = [Target("default", POOL, p.name, "127.0.0.1", p.port) for p in cluster.pods]
        col = Collector(
            CollectorConfig(
                node_name="n", nats=NatsOptions(servers=[nats_url]), targets=targets, ops_port=None
            )
        )
        await col.start()
        ports = (free_port(), free_port())
        p = Picker(picker_config(nats_url, str(models), "picker-a", *ports))
        await p.start()
        opts = BootstrapOptions(
            pickers=(p.address,),
            picker_health_port=p.health_port,
            listen_address="127.0.0.1",
            listen_port=free_port(),
            admin_port=free_port(),
        )
        state = {"picker": p, "models": str(models), "ports": ports, "pods": cluster.pods}
        try:
            await p.wait_ready(15)
            async with EnvoyProcess(build_bootstrap(opts), envoy_binary):
                state["url"] = f"http://127.0.0.1:{opts.listen_port}"
                yield state
        finally:
            await state["picker"].stop(grace=0.2)
            await col.stop()


def served(pods, model: str) -> int:
    return sum(p.requests_by_model.get(model, 0) for p in pods)


def phase_of(p: Picker) -> str | None:
    st = next(iter(p.rollout.states.values()), None)
    return None if st is None else st.phase


def weight_of(p: Picker) -> int | None:
    st = next(iter(p.rollout.states.values()), None)
    return None if st is None else st.weight


async def test_a_failing_canary_rolls_back_to_zero_at_once(nats_server, envoy_binary, tmp_path) -> None:
    async with rollout_stack(nats_server.url, envoy_binary, tmp_path, hold=60, fail=True) as s:
        p: Picker = s["picker"]
        with Load(s["url"]) as load:
            await wait_until(lambda: weight_of(p) == 20, 15, "the rollout starts at 20%")
            await wait_until(lambda: phase_of(p) == "rolled_back", 20, "rollback")
            await asyncio.sleep(0.2)  # requests already routed to the canary finish
            mark, v2 = len(load.replies), served(s["pods"], "chat-v2")
            await wait_until(lambda: len(load.replies) >= mark + 30, 20, "30 more requests")
        rec = await record(nats_server.url)
        assert (rec["phase"], rec["weight"]) == ("rolled_back", 0) and "error rate" in rec["reason"]
        assert any(status == 500 for status, _ in load.replies[:mark])  # the canary did fail
        # after the rollback (the hold was 60 s: it did not wait for it) every request is stable
        assert all(status == 200 for status, _ in load.replies[mark:]), load.replies[mark:][:5]
        assert served(s["pods"], "chat-v2") == v2 and v2 > 0


async def test_a_healthy_canary_reaches_100_percent_across_a_picker_restart(
    nats_server, envoy_binary, tmp_path
) -> None:
    async with rollout_stack(nats_server.url, envoy_binary, tmp_path, hold=1.5, fail=False) as s:
        p: Picker = s["picker"]
        with Load(s["url"]) as load:
            await wait_until(lambda: weight_of(p) == 50, 30, "the rollout advances to 50%")
            before = await record(nats_server.url)
            # restart the picker (same ports: the gateway keeps its address)
            await p.stop(grace=0.2)
            p = s["picker"] = Picker(picker_config(nats_server.url, s["models"], "picker-a", *s["ports"]))
            await p.start()
            await p.wait_ready(15)
            await wait_until(lambda: weight_of(p) is not None, 10, "the new picker read the state")
            assert weight_of(p) >= 50  # where the shared record was, not back at 20%
            starts = p.registry.get_sample_value(
                "infergate_rollout_transitions_total", {"model": "chat", "kind": "start"}
            )
            assert not starts  # it never restarted the rollout
            await wait_until(lambda: weight_of(p) == 100, 30, "the rollout completes")
            await asyncio.sleep(0.2)  # requests already routed to the stable model finish
            mark, v1 = len(load.replies), served(s["pods"], "chat-v1")
            await wait_until(lambda: len(load.replies) >= mark + 20, 20, "20 more requests")
        rec = await record(nats_server.url)
        assert (rec["phase"], rec["weight"]) == ("complete", 100)
        assert rec["since"] > before["since"]  # advanced after the restart, from the kept step
        assert all(status == 200 for status, _ in load.replies[mark:])
        assert served(s["pods"], "chat-v1") == v1 and v1 > 0  # all on the canary now
