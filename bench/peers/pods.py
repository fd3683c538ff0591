"""Freshly started simulated pods for one run: one ``infergate-sim serve`` process per pod.

Every run gets new pods (new processes, empty caches), so no route inherits another's
warm prefix cache. Pods imitate vLLM, or SGLang for ``sglang-router`` (which polls
SGLang's ``/get_load``); the engine underneath is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.procs import ServiceProcess, python_module, stop_all
from bench.stack import BASE_MODEL
from shared.natsd import free_port


@dataclass(frozen=True)
class PodSetup:
    """What every pod of a run looks like."""

    count: int = 4
    time_scale: float = 10.0
    flavor: str = "vllm"
    lora_adapters: tuple[str, ...] = ()
    sim_args: tuple[str, ...] = ()


@dataclass
class Pod:
    name: str
    port: int
    process: ServiceProcess

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def pod_process(name: str, port: int, setup: PodSetup, log_dir: Path) -> ServiceProcess:
    args = [
        "serve",
        "--ports", str(port),
        "--name-prefix", name,
        "--model", BASE_MODEL,
        "--engine", setup.flavor,
        "--time-scale", str(setup.time_scale),
        "--ops-host", "127.0.0.1",
        "--log-format", "json",
        *setup.sim_args,
    ]  # fmt: skip
    if setup.lora_adapters:
        args += ["--lora-adapters", ",".join(setup.lora_adapters)]
    # The serving port is chosen here (a router is given it before the pod starts); the ops
    # port is bound at 0 and reported, so it cannot race the router's outgoing connections.
    return ServiceProcess(
        f"sim-{name}",
        python_module("sim", *args),
        log_dir,
        ready_url=f"http://127.0.0.1:{port}/health",
        port_flags={"ops": "--ops-port"},
    )


def plan_pods(setup: PodSetup, log_dir: Path) -> list[Pod]:
    """The pods with their ports chosen, not started: a router can be told their URLs first."""
    pods = []
    for i in range(setup.count):
        port = free_port()
        pods.append(Pod(f"pod-{i}", port, pod_process(f"pod-{i}", port, setup, log_dir)))
    return pods


async def start_pods(setup: PodSetup, log_dir: Path, pods: list[Pod] | None = None) -> list[Pod]:
    """Start ``pods`` (or a new plan) together and wait until every one answers ``/health``."""
    import asyncio

    pods = plan_pods(setup, log_dir) if pods is None else pods
    try:
        await asyncio.gather(*(p.process.start(60) for p in pods))
    except BaseException:
        await stop_pods(pods)
        raise
    return pods


async def stop_pods(pods: list[Pod]) -> None:
    await stop_all([p.process for p in pods])
