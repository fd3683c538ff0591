"""The three simulated workloads, as one sampler interface for the DES.

Each returns :class:`sim.workloads.WorkItem` objects (token lengths, synthetic prefix
block hashes, an optional LoRA adapter). The hashes are the simulator's synthetic ones
(16-token blocks, equal exactly when prefixes are equal), and the DES passes the same
list to the engine (to hit its prefix cache) and to the scheduler (to score prefix
affinity), so both sides agree on what is shared, as ``shared.hashing`` guarantees in
the real system.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sim.workloads import SharedPrefix, ShareGPTLike, WorkItem, ZipfChoice

WORKLOADS = ("sharegpt", "shared-prefix", "lora")


@dataclass(frozen=True)
class WorkloadSpec:
    """Which workload, and its knobs (defaults: design.md §5)."""

    name: str = "sharegpt"
    prefix_groups: int = 256
    prefix_prompts_per_group: int = 16
    system_tokens: int = 2048
    question_tokens: int = 256
    prefix_output_tokens: int = 256
    lora_adapters: int = 12
    lora_zipf_s: float = 1.0


class Sampler:
    """Draws one :class:`WorkItem` per call, reproducibly from ``rng``."""

    def __init__(self, spec: WorkloadSpec, rng: random.Random) -> None:
        if spec.name not in WORKLOADS:
            raise ValueError(f"unknown workload {spec.name!r} (known: {', '.join(WORKLOADS)})")
        self.spec = spec
        self._lora: ZipfChoice | None = None
        self.adapters: list[str] = []
        if spec.name == "shared-prefix":
            self._src = SharedPrefix(
                rng,
                groups=spec.prefix_groups,
                prompts_per_group=spec.prefix_prompts_per_group,
                system_tokens=spec.system_tokens,
                question_tokens=spec.question_tokens,
                output_tokens=spec.prefix_output_tokens,
            )
        else:
            self._src = ShareGPTLike(rng)
            if spec.name == "lora":
                names = [f"adapter-{i}" for i in range(spec.lora_adapters)]
                self.adapters = names
                self._lora = ZipfChoice(names, spec.lora_zipf_s, random.Random(rng.getrandbits(32)))

    def __call__(self) -> WorkItem:
        item = self._src.sample()
        if self._lora is not None:
            item.lora = self._lora()
        return item
