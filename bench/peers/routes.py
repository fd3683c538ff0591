"""The routes under test, and how each one is started on fresh pods.

* ``infergate``: the whole stack of :mod:`bench.stack` (NATS, one collector per node, two
  picker replicas with the ``default`` profile, Envoy consulting them over ext_proc), on
  new pods; the autoscaler is off (it routes nothing).
* ``envoy-rr``: Envoy alone, round-robin over the pods (the baseline without a picker).
* ``sglang-router/<policy>`` on SGLang-flavoured pods (it polls their ``/get_load``) and
  ``vllm-router/<policy>`` on vLLM pods (``cache_aware`` renders every request on every
  pod through ``/v1/completions/render``), each router with its defaults except ports.

Every route hands back its base URL and the pids whose CPU is the route's own cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.peers.install import PeerEnv
from bench.peers.pods import Pod, PodSetup, plan_pods, start_pods, stop_pods
from bench.procs import ServiceProcess
from bench.stack import BASE_MODEL, POOL, PodPlan, Stack, StackConfig
from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions
from picker.envoy.process import EnvoyProcess
from shared.natsd import free_port

SGLANG_POLICIES = ("cache_aware", "power_of_two", "round_robin")
VLLM_POLICIES = ("cache_aware", "power_of_two", "round_robin", "consistent_hash")


@dataclass(frozen=True)
class Route:
    name: str
    kind: str  # "infergate" | "envoy-rr" | "sglang" | "vllm"
    policy: str = ""

    @property
    def flavor(self) -> str:
        return "sglang" if self.kind == "sglang" else "vllm"

    @property
    def is_peer(self) -> bool:
        return self.kind in ("sglang", "vllm")


def all_routes(peers: bool = True) -> list[Route]:
    routes = [Route("InferGate", "infergate"), Route("Envoy round-robin", "envoy-rr")]
    if peers:
        routes += [Route(f"sglang-router {p}", "sglang", p) for p in SGLANG_POLICIES]
        routes += [Route(f"vllm-router {p}", "vllm", p) for p in VLLM_POLICIES]
    return routes


@dataclass
class Running:
    """A started route: where to send, whose CPU to count, which pods serve."""

    url: str
    pids: dict[str, int] = field(default_factory=dict)
    pods: list[str] = field(default_factory=list)  # ip:port
    pod_pids: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)


def models_yaml(adapters: tuple[str, ...]) -> str:
    """InferenceModels for the base model and each adapter (served under its own name)."""
    docs = []
    for name in (BASE_MODEL, *adapters):
        docs.append(
            "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\n"
            f"metadata: {{name: m{len(docs)}}}\n"
            f"spec: {{modelName: {name}, criticality: Critical, poolRef: {{name: {POOL}}}}}\n"
        )
    return "---\n".join(docs)


@contextlib.asynccontextmanager
async def infergate(setup: PodSetup, work_dir: Path) -> AsyncIterator[Running]:
    plans = tuple(
        PodPlan(f"vllm-{i}", f"node-{'ab'[i % 2]}", setup.lora_adapters) for i in range(setup.count)
    )
    config = StackConfig(
        pods=plans,
        pickers=2,
        profile="default",
        time_scale=setup.time_scale,
        sim_args=setup.sim_args,
        autoscaler=False,
        round_robin_envoy=False,
        work_dir=work_dir,
        keep_work_dir=True,
        models_yaml=models_yaml(setup.lora_adapters),
    )
    async with Stack(config) as stack:
        pids = {"envoy": stack.envoy.proc.pid, "nats-server": stack.nats.proc.pid}
        pids |= {p.name: p.process.proc.pid for p in stack.pickers}
        pids |= {f"collector-{n}": c.proc.pid for n, c in stack.collectors.items()}
        yield Running(
            stack.gateway_url,
            pids,
            [p.address for p in stack.pods],
            [p.process.proc.pid for p in stack.pods],
            [stack.log_dir],
        )


@contextlib.asynccontextmanager
async def envoy_rr(pods: list[Pod]) -> AsyncIterator[Running]:
    port = free_port()
    opts = BootstrapOptions(
        mode="round-robin",
        listen_address="127.0.0.1",
        listen_port=port,
        admin_port=free_port(),
        pool_endpoints=tuple(p.address for p in pods),
    )
    envoy = EnvoyProcess(build_bootstrap(opts))
    await envoy.start(30)
    try:
        yield Running(f"http://127.0.0.1:{port}", {"envoy": envoy.proc.pid})
    finally:
        await envoy.stop()


def peer_argv(route: Route, env: PeerEnv, port: int, metrics_port: int, pods: list[Pod]) -> list[str]:
    base = env.sglang_router_argv() if route.kind == "sglang" else env.vllm_router_argv()
    return [
        *base,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--worker-urls", *(p.url for p in pods),
        "--policy", route.policy,
        "--prometheus-port", str(metrics_port),
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def peer(
    route: Route, env: PeerEnv, pods: list[Pod], log_dir: Path, starting: Awaitable[object]
) -> AsyncIterator[Running]:
    """The router, started while its pods start (``starting``): both are up on entry."""
    port = free_port()
    argv = peer_argv(route, env, port, free_port(), pods)
    name = route.name.replace(" ", "-")
    proc = ServiceProcess(name, argv, log_dir, ready_url=f"http://127.0.0.1:{port}/health")
    try:
        await asyncio.gather(proc.start(90), starting)
        yield Running(f"http://127.0.0.1:{port}", {name: proc.proc.pid}, logs=[proc.log_path])
    finally:
        await proc.stop()


@contextlib.asynccontextmanager
async def launch(
    route: Route, setup: PodSetup, env: PeerEnv | None, work_dir: Path
) -> AsyncIterator[Running]:
    """Fresh pods and the route in front of them; everything stops on exit.

    A peer router starts at the same time as its pods (it is given their chosen ports, and
    both routers wait for their workers); Envoy round-robin starts once they are up.
    """
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    if route.kind == "infergate":
        async with infergate(setup, work_dir) as running:
            await wait_serving(running.url)
            yield running
        return
    if route.is_peer and env is None:
        raise RuntimeError(f"{route.name}: the peers are not installed")
    log_dir = work_dir / "logs"
    pods = plan_pods(PodSetup(**{**setup.__dict__, "flavor": route.flavor}), log_dir)
    try:
        if route.kind == "envoy-rr":
            await start_pods(setup, log_dir, pods)
            cm = envoy_rr(pods)
        else:
            assert env is not None
            cm = peer(route, env, pods, log_dir, start_pods(setup, log_dir, pods))
        async with cm as running:
            running.pods = [p.address for p in pods]
            running.pod_pids = [p.process.proc.pid for p in pods]
            await wait_serving(running.url)
            yield running
    finally:
        await stop_pods(pods)


async def wait_serving(url: str, timeout: float = 60.0) -> None:
    """Until a one-token completion comes back 200 (a router is up before it has workers)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    body = {"model": BASE_MODEL, "prompt": "ready?", "max_tokens": 1}
    last = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while loop.time() < deadline:
            try:
                async with session.post(url + "/v1/completions", json=body) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}: {(await resp.text())[:200]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{url} never served a request: {last}")
