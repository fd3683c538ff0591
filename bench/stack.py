"""The whole InferGate stack on one machine, every service a real process.

``async with Stack(StackConfig()) as stack:`` starts, in order: nats-server with
JetStream; simulated vLLM pods (one process per pod, so a fault can kill one pod);
one collector per simulated node (static targets files); N picker replicas; the
autoscaler; an Envoy consulting the pickers over ext_proc; and an Envoy doing plain
round-robin over the same pods, for comparison. Everything listens on 127.0.0.1 on free
ports and is stopped on exit (SIGTERM, then SIGKILL), on Ctrl-C too. Every InferGate
service binds port 0 and reports the ports it got (``--port-file``, see
:mod:`shared.portfile`), so nothing races another process for a port.

The demo, the fault report and the end-to-end tests all use this one class, so each
exercises the same command lines a user would run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import ServiceProcess, python_module, stop_all
from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions
from picker.envoy.process import EnvoyProcess
from shared.natsd import NatsServer, free_port

BASE_MODEL = "meta-llama/Llama-2-7b-hf"
NAMESPACE = "default"
POOL = "vllm-llama2-7b"


@dataclass(frozen=True)
class PodPlan:
    name: str
    node: str
    lora_adapters: tuple[str, ...] = ()
    accelerator: str = ""  # a sim accelerator profile (sim/accelerators.yaml); "" = the default H100
    cost_per_hour: float = 0.0  # put in the targets file with the accelerator (0 = unknown)


@dataclass(frozen=True)
class StackConfig:
    """What to run. The defaults are the demo's: 4 pods on 2 nodes, 2 pickers."""

    pods: tuple[PodPlan, ...] = (
        PodPlan("vllm-0", "node-a", ("chat-lora-v1",)),
        PodPlan("vllm-1", "node-a", ("chat-lora-v1", "chat-lora-v2")),
        PodPlan("vllm-2", "node-b", ("summarize-lora",)),
        PodPlan("vllm-3", "node-b", ()),
    )
    pickers: int = 2
    profile: str = "default"
    failure_mode: str = "FailClose"
    time_scale: float = 10.0  # wall seconds per simulated H100 second
    sim_args: tuple[str, ...] = ()  # extra `infergate-sim serve` flags (e.g. a smaller KV cache)
    picker_args: tuple[str, ...] = ()
    autoscaler: bool = True
    round_robin_envoy: bool = True
    kv_events: bool = False  # pods publish vLLM KV events, collectors follow them (precise prefix)
    unknown_model_policy: str = "reject"
    # A NATS the caller runs (comma-separated URLs: a cluster, a locked-down server); None
    # starts a plain nats-server. ``nats_args`` adds NATS flags per service ("collector",
    # "picker", "autoscaler"): credentials, TLS, inbox prefix, stream replicas.
    nats_url: str | None = None
    nats_args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    work_dir: Path | None = None  # logs and config files; a temp dir when None
    keep_work_dir: bool = False
    models_yaml: str = field(
        default=f"""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: base}}
spec: {{modelName: {BASE_MODEL}, criticality: Critical, poolRef: {{name: {POOL}}}}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: chat}}
spec:
  modelName: chat
  criticality: Critical
  poolRef: {{name: {POOL}}}
  targetModels: [{{name: chat-lora-v1, weight: 90}}, {{name: chat-lora-v2, weight: 10}}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: summarize}}
spec: {{modelName: summarize, criticality: Standard, poolRef: {{name: {POOL}}},
        targetModels: [{{name: summarize-lora}}]}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: batch}}
spec: {{modelName: batch, criticality: Sheddable, poolRef: {{name: {POOL}}},
        targetModels: [{{name: {BASE_MODEL}}}]}}
"""
    )


@dataclass
class SimPod:
    plan: PodPlan
    process: ServiceProcess
    kv_port: int = 0  # KV events PUB (0: none)
    kv_replay_port: int = 0

    @property
    def port(self) -> int:
        return self.process.ports["pod-0"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Picker:
    name: str
    process: ServiceProcess

    @property
    def grpc_port(self) -> int:
        return self.process.ports["grpc"]

    @property
    def health_port(self) -> int:
        return self.process.ports["health"]

    @property
    def metrics_port(self) -> int:
        return self.process.ports["metrics"]


def metric_samples(page: str, name: str) -> list[float]:
    """The values of every sample named exactly ``name`` (any labels) in a Prometheus text page."""
    return [
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith((name + "{", name + " "))
    ]


class Stack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.work_dir = Path(self.config.work_dir or tempfile.mkdtemp(prefix="infergate-stack-"))
        self.log_dir = self.work_dir / "logs"
        self.nats = NatsServer(store_dir=str(self.work_dir / "nats"))
        self.pods: list[SimPod] = []
        self.collectors: dict[str, ServiceProcess] = {}
        self.pickers: list[Picker] = []
        self.autoscaler: ServiceProcess | None = None
        self.envoy: EnvoyProcess | None = None
        self.envoy_port = 0
        self.round_robin: EnvoyProcess | None = None
        self.round_robin_port = 0
        self.extra_envoys: list[EnvoyProcess] = []

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.config.nats_url is None:
            await asyncio.to_thread(self.nats.start)
        self._write_config()
        self.pods = [self._pod(plan) for plan in self.config.pods]
        await asyncio.gather(*(p.process.start(60) for p in self.pods))
        self.collectors = {node: self._collector(node) for node in self.nodes}
        self.pickers = [self._picker(i) for i in range(self.config.pickers)]
        starts = [c.start(60) for c in self.collectors.values()] + [p.process.start(60) for p in self.pickers]
        if self.config.autoscaler:
            self.autoscaler = self._autoscaler()
            starts.append(self.autoscaler.start(60))
        await asyncio.gather(*starts)
        self.envoy = EnvoyProcess(build_bootstrap(self.picker_envoy_options()))
        envoys = [self.envoy.start(30)]
        if self.config.round_robin_envoy:
            rr = BootstrapOptions(
                mode="round-robin",
                listen_address="127.0.0.1",
                listen_port=0,
                admin_port=0,
                pool_endpoints=tuple(p.address for p in self.pods),
            )
            self.round_robin = EnvoyProcess(build_bootstrap(rr))
            envoys.append(self.round_robin.start(30))
        await asyncio.gather(*envoys)
        self.envoy_port = self.envoy.port  # Envoy bound port 0; the admin API says where
        if self.round_robin is not None:
            self.round_robin_port = self.round_robin.port

    def picker_envoy_options(
        self, port: int | None = None, failure_mode: str | None = None
    ) -> BootstrapOptions:
        return BootstrapOptions(
            mode="picker",
            listen_address="127.0.0.1",
            listen_port=self.envoy_port if port is None else port,
            admin_port=0,
            pickers=tuple(f"127.0.0.1:{p.grpc_port}" for p in self.pickers),
            picker_health_ports=tuple(p.health_port for p in self.pickers),
            pool_endpoints=tuple(p.address for p in self.pods),
            failure_mode=failure_mode or self.config.failure_mode,
        )

    async def add_gateway(
        self, failure_mode: str, patch: Callable[[dict[str, Any]], None] | None = None
    ) -> str:
        """Start one more picker-consulting Envoy with another failure mode; returns its base URL.

        The fault report and the tests compare FailClose and FailOpen on the same pickers
        and pods, which is cheaper (and a fairer comparison) than a second stack. ``patch``
        edits the generated bootstrap in place, to measure a proposed Envoy change side by
        side with the generated configuration.
        """
        bootstrap = build_bootstrap(self.picker_envoy_options(0, failure_mode))
        if patch is not None:
            patch(bootstrap)
        envoy = EnvoyProcess(bootstrap)
        await envoy.start(30)
        self.extra_envoys.append(envoy)
        return f"http://127.0.0.1:{envoy.port}"

    async def stop(self) -> None:
        envoys = [e.stop() for e in (self.envoy, self.round_robin, *self.extra_envoys) if e is not None]
        await asyncio.gather(*envoys, return_exceptions=True)
        services = [*(p.process for p in self.pickers), *self.collectors.values()]
        if self.autoscaler is not None:
            services.append(self.autoscaler)
        await stop_all(services)
        await stop_all([p.process for p in self.pods])
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.nats.stop)
        if not self.config.keep_work_dir and self.config.work_dir is None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- addresses -------------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        return sorted({p.node for p in self.config.pods})

    @property
    def nats_url(self) -> str:
        return self.config.nats_url or self.nats.url

    def _nats_flags(self, service: str) -> list[str]:
        return ["--nats-url", self.nats_url, *self.config.nats_args.get(service, ())]

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def round_robin_url(self) -> str:
        return f"http://127.0.0.1:{self.round_robin_port}"

    @property
    def autoscaler_port(self) -> int:
        return self.autoscaler.ports["api"] if self.autoscaler is not None else 0

    @property
    def autoscaler_url(self) -> str:
        return f"https://127.0.0.1:{self.autoscaler_port}"

    def pod(self, name: str) -> SimPod:
        return next(p for p in self.pods if p.plan.name == name)

    # -- processes -------------------------------------------------------------------------
    def _write_config(self) -> None:
        pool = {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": POOL, "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": POOL}},
                "targetPorts": [{"number": 8000}],
                "endpointPickerRef": {"name": "infergate-picker", "port": {"number": 9002}},
            },
        }
        text = yaml.safe_dump(pool) + "---\n" + self.config.models_yaml
        (self.work_dir / "pool.yaml").write_text(text)

    def _pod(self, plan: PodPlan) -> SimPod:
        args = [
            "serve",
            "--name-prefix", plan.name,
            "--model", BASE_MODEL,
            "--time-scale", str(self.config.time_scale),
            "--ops-host", "127.0.0.1",
            "--log-format", "json",
            *self.config.sim_args,
        ]  # fmt: skip
        if plan.lora_adapters:
            args += ["--lora-adapters", ",".join(plan.lora_adapters)]
        kv_port = kv_replay = 0
        if self.config.kv_events:
            kv_port, kv_replay = free_port(), free_port()
            kv_cfg = {"endpoint": f"tcp://*:{kv_port}", "replay_endpoint": f"tcp://*:{kv_replay}"}
            args += ["--kv-events-config", json.dumps(kv_cfg)]
        if plan.accelerator:
            args += ["--accelerator", plan.accelerator]
        proc = ServiceProcess(
            f"sim-{plan.name}",
            python_module("sim", *args),
            self.log_dir,
            ready_url="http://127.0.0.1:{pod-0}/health",
            port_flags={"pod-0": "--ports", "ops": "--ops-port"},
        )
        return SimPod(plan, proc, kv_port, kv_replay)

    def _collector(self, node: str) -> ServiceProcess:
        targets = [
            {"pool": POOL, "namespace": NAMESPACE, "pod": p.plan.name, "address": p.address, "node": node}
            | (
                {
                    "kv_events": f"tcp://127.0.0.1:{p.kv_port}",
                    "kv_replay": f"tcp://127.0.0.1:{p.kv_replay_port}",
                }
                if p.kv_port
                else {}
            )
            | ({"accelerator": p.plan.accelerator} if p.plan.accelerator else {})
            | ({"cost_per_hour": p.plan.cost_per_hour} if p.plan.cost_per_hour else {})
            for p in self.pods
            if p.plan.node == node
        ]
        path = self.work_dir / f"targets-{node}.yaml"
        path.write_text(yaml.safe_dump(targets))
        argv = python_module(
            "collector",
            "--discovery", "static",
            "--targets-file", str(path),
            "--node-name", node,
            *self._nats_flags("collector"),
            "--ops-host", "127.0.0.1",
        )  # fmt: skip
        return ServiceProcess(
            f"collector-{node}",
            argv,
            self.log_dir,
            ready_url="http://127.0.0.1:{ops}/readyz",
            port_flags={"ops": "--ops-port"},
        )

    def _picker(self, index: int) -> Picker:
        name = f"picker-{index}"
        argv = python_module(
            "picker",
            "--pool-name", POOL,
            "--pool-namespace", NAMESPACE,
            "--grpc-host", "127.0.0.1",
            "--metrics-host", "127.0.0.1",
            "--profile", self.config.profile,
            "--config-files", str(self.work_dir / "pool.yaml"),
            "--unknown-model-policy", self.config.unknown_model_policy,
            "--replica-name", name,
            *self._nats_flags("picker"),
            *self.config.picker_args,
        )  # fmt: skip
        proc = ServiceProcess(
            name,
            argv,
            self.log_dir,
            ready_url="http://127.0.0.1:{metrics}/readyz",
            port_flags={"grpc": "--grpc-port", "health": "--grpc-health-port", "metrics": "--metrics-port"},
        )
        return Picker(name, proc)

    def _autoscaler(self) -> ServiceProcess:
        argv = python_module(
            "autoscaler",
            *self._nats_flags("autoscaler"),
            "--bind-address", "127.0.0.1",
            "--ops-host", "127.0.0.1",
            "--config-files", str(self.work_dir / "pool.yaml"),
        )  # fmt: skip
        return ServiceProcess(
            "autoscaler",
            argv,
            self.log_dir,
            ready_url="http://127.0.0.1:{ops}/readyz",
            port_flags={"api": "--secure-port", "ops": "--ops-port"},
        )

    # -- faults ----------------------------------------------------------------------------
    async def restart_nats_after(self, outage_s: float) -> None:
        await asyncio.to_thread(self.nats.stop)
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(self.nats.start)
