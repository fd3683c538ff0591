"""A LoRA rollout end to end on one machine: the collector loads two adapter versions where the
spec wants them, then the picker moves client traffic from v1 to v2 step by step.

    python -m bench.rollout_demo                  # a healthy canary: 10% -> 50% -> 100%
    python -m bench.rollout_demo --broken-canary  # v2's requests fail: rolled back at once

Everything is real and local: nats-server with JetStream, simulated vLLM pods without any
adapter loaded, one collector (adapters file: chat-v1 and chat-v2 on 2 pods each), one
picker (a rewrite rule "chat" -> chat-v1/chat-v2 marked for rollout) behind Envoy, and a
client sending "chat" requests. It prints the placement, then one line per second: the
canary's weight and phase, and where the last second's requests went.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

import aiohttp

from collector.service import Collector, CollectorConfig
from collector.targets import Target
from picker.config import PickerConfig
from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions
from picker.envoy.process import EnvoyProcess
from picker.service import Picker
from picker.sharing import SharingSettings
from shared.natsconn import NatsOptions
from shared.natsd import NatsServer, free_port
from sim.server import PodSpec, SimCluster

ADAPTERS = """
adapters:
  - {name: chat-v1, source: /adapters/chat-v1, replicas: 2}
  - {name: chat-v2, source: /adapters/chat-v2, replicas: 2}
"""
REWRITE = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata:
  name: chat-rollout
  annotations:
    infergate.io/rollout: "true"
    infergate.io/rollout-steps: "10,50,100"
    infergate.io/rollout-hold: "{hold}"
    infergate.io/rollout-min-requests: "10"
spec:
  poolRef: {{name: pool}}
  rules:
    - matches: [{{model: {{type: Exact, value: chat}}}}]
      targets: [{{modelRewrite: chat-v1}}, {{modelRewrite: chat-v2}}]
"""


async def client(url: str, pods, stop: asyncio.Event, counts: dict[int, int]) -> None:
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            body = {"model": "chat", "prompt": "hello from the rollout demo", "max_tokens": 8}
            async with http.post(f"{url}/v1/completions", json=body) as r:
                await r.read()
                counts[r.status] = counts.get(r.status, 0) + 1


async def until(cond) -> None:
    """Poll ``cond`` (the collector's placement is visible only in the pods)."""
    for _ in range(600):
        if cond():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the adapters were not placed within 60 s")


def served(pods, model: str) -> int:
    return sum(p.requests_by_model.get(model, 0) for p in pods)


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="infergate-rollout-"))
    (work / "adapters.yaml").write_text(ADAPTERS)
    (work / "models.yaml").write_text(REWRITE.format(hold=args.hold))
    fail = ["chat-v2"] if args.broken_canary else []
    with NatsServer(store_dir=str(work / "nats")) as nats:
        nopts = NatsOptions(servers=[nats.url])
        specs = [PodSpec(name=f"vllm-{i}", fail_adapters=fail) for i in range(4)]
        async with SimCluster(specs) as cluster:
            pods = cluster.pods
            collector = Collector(
                CollectorConfig(
                    node_name="node-a",
                    nats=nopts,
                    targets=[Target("default", "pool", p.name, "127.0.0.1", p.port) for p in pods],
                    ops_port=None,
                    adapters_file=str(work / "adapters.yaml"),
                    adapter_sync_interval=0.2,
                )
            )
            await collector.start()
            await until(lambda: sum(len(p.loras) for p in pods) >= 4)
            for p in pods:
                print(f"{p.name}: adapters {sorted(p.loras)}")
            picker = Picker(
                PickerConfig(
                    pool_name="pool",
                    grpc_host="127.0.0.1",
                    grpc_port=0,
                    grpc_health_port=0,
                    metrics_host="127.0.0.1",
                    metrics_port=0,
                    config_files=[str(work / "models.yaml")],
                    replica_name="picker-0",
                    nats=NatsOptions(servers=[nats.url], name="picker-0"),
                    sharing=SharingSettings(replica="picker-0"),
                )
            )
            await picker.start()
            await picker.wait_ready(20)
            port = free_port()
            opts = BootstrapOptions(
                pickers=(picker.address,),
                picker_health_port=picker.health_port,
                listen_address="127.0.0.1",
                listen_port=port,
                admin_port=free_port(),
            )
            stop, counts = asyncio.Event(), {}
            try:
                async with EnvoyProcess(build_bootstrap(opts)):
                    url = f"http://127.0.0.1:{port}"
                    tasks = [asyncio.create_task(client(url, pods, stop, counts)) for _ in range(3)]
                    t0, last = time.monotonic(), (0, 0)
                    while time.monotonic() - t0 < args.seconds:
                        await asyncio.sleep(1.0)
                        st = next(iter(picker.rollout.states.values()), None)
                        now = (served(pods, "chat-v1"), served(pods, "chat-v2"))
                        d1, d2 = now[0] - last[0], now[1] - last[1]
                        last = now
                        share = d2 / (d1 + d2) if d1 + d2 else 0.0
                        state = f"{st.weight:3d}% {st.phase:<11}" if st else "  -  (no state yet)"
                        print(
                            f"t={time.monotonic() - t0:5.1f}s canary weight {state} "
                            f"last second: chat-v1 {d1:3d}, chat-v2 {d2:3d} ({share:4.0%}) statuses {counts}"
                        )
                        if st is not None and st.phase != "progressing":
                            print(f"rollout {st.phase}: {st.reason}")
                            break
                    stop.set()
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await picker.stop(grace=0.2)
                await collector.stop()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broken-canary", action="store_true", help="make chat-v2's requests fail (500)")
    p.add_argument("--hold", type=float, default=3.0, help="seconds each step is held")
    p.add_argument("--seconds", type=float, default=40.0, help="stop after this long")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
