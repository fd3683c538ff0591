"""Many simulated pods in one event loop: ``async with SimCluster(n=3) as c: c.pods[0].address``."""

from __future__ import annotations

import asyncio

from sim.engine import EngineConfig
from sim.pod import PodSpec, SimPod


class SimCluster:
    """N simulated pods in this event loop.

    Pass ``specs`` (one :class:`PodSpec` each) or ``n`` with shared settings; ``port=0``
    picks free ports, ``base_port`` gives consecutive ones.
    """

    def __init__(
        self,
        specs: list[PodSpec] | None = None,
        *,
        n: int = 1,
        base_port: int = 0,
        host: str = "127.0.0.1",
        model: str = "meta-llama/Llama-2-7b-hf",
        lora_adapters: list[str] | None = None,
        time_scale: float = 1.0,
        engine: EngineConfig | None = None,
        name_prefix: str = "sim",
        flavor: str = "vllm",
    ) -> None:
        if specs is None:
            specs = [
                PodSpec(
                    name=f"{name_prefix}-{i}",
                    port=(base_port + i) if base_port else 0,
                    host=host,
                    model=model,
                    lora_adapters=list(lora_adapters or []),
                    engine=engine,
                    time_scale=time_scale,
                    flavor=flavor,
                )
                for i in range(n)
            ]
        self.pods = [SimPod(s) for s in specs]

    @property
    def addresses(self) -> list[str]:
        return [p.address for p in self.pods]

    async def start(self) -> None:
        for p in self.pods:
            await p.start()

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.pods), return_exceptions=True)

    async def kill(self, i: int) -> None:
        """Take pod ``i`` down (port closed, in-flight requests dropped)."""
        await self.pods[i].stop()

    async def restart(self, i: int) -> None:
        """Bring pod ``i`` back on the same port with an empty engine."""
        await self.pods[i].restart()

    async def __aenter__(self) -> SimCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
