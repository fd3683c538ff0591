"""LoRA adapters of one engine: which run and wait, and where each adapter's weights are.

vLLM batches at most ``max_loras`` distinct adapters. Adapters live in a CPU cache of
``max_cpu_loras`` (LRU) and in ``max_loras`` GPU slots (LRU); a step that needs an
adapter from disk takes ``lora_load_s`` longer, one that moves a CPU-cached adapter to a
GPU slot ``lora_activate_s`` longer.
"""

from __future__ import annotations

from collections import OrderedDict

from sim.config import EngineConfig


class LoraSlots:
    """Adapter counts of running/waiting requests, and the CPU/GPU residency of adapters."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.running: dict[str, int] = {}  # adapter -> running requests
        self.waiting: dict[str, int] = {}  # adapter -> waiting requests
        self.cpu: OrderedDict[str, None] = OrderedDict()
        self.gpu: OrderedDict[str, None] = OrderedDict()
        self.loads = 0

    @staticmethod
    def inc(counts: dict[str, int], name: str) -> None:
        counts[name] = counts.get(name, 0) + 1

    @staticmethod
    def dec(counts: dict[str, int], name: str) -> None:
        n = counts[name] - 1
        if n:
            counts[name] = n
        else:
            del counts[name]

    def evict(self, name: str) -> None:
        """Drop an adapter from the CPU cache and GPU slots (on unload)."""
        self.cpu.pop(name, None)
        self.gpu.pop(name, None)

    def touch_cpu(self, name: str) -> bool:
        """Make ``name`` CPU-resident; True if it had to be loaded from disk."""
        cpu = self.cpu
        if name in cpu:
            cpu.move_to_end(name)
            return False
        cpu[name] = None
        while len(cpu) > self.cfg.max_cpu_loras:
            old, _ = cpu.popitem(last=False)
            self.gpu.pop(old, None)
        return True

    def step_cost(self) -> float:
        """Extra step time to make the batch's adapters GPU-resident (LRU slots)."""
        cfg = self.cfg
        gpu = self.gpu
        extra = 0.0
        for name in self.running:
            if name in gpu:
                gpu.move_to_end(name)
                continue
            if self.touch_cpu(name):
                extra += cfg.lora_load_s
                self.loads += 1
            else:
                self.cpu.move_to_end(name)
            extra += cfg.lora_activate_s
            gpu[name] = None
            while len(gpu) > cfg.max_loras:
                gpu.popitem(last=False)
        return extra
