"""The demo's mixed pool (``infergate-bench demo --mixed-pool``): the same 4 pods, nodes and LoRA
adapters as the default stack, on different accelerators with their (indicative) prices.

Capacity on ShareGPT-like load (sim/README.md): H100 ~26.6, A100 ~13.7, L40S ~6.5 req/s, so
this pool has about 60% of four H100s': scale the demo's loads down accordingly.
"""

from __future__ import annotations

from dataclasses import replace

from bench.stack import PodPlan, StackConfig

__all__ = ["MIXED_ACCELERATORS", "mixed_pool"]

MIXED_ACCELERATORS = ("h100-80gb", "a100-80gb", "a100-80gb", "l40s-48gb")


def mixed_pool() -> tuple[PodPlan, ...]:
    from sim.accel import profile

    return tuple(
        replace(p, accelerator=a, cost_per_hour=profile(a).cost_per_hour)
        for p, a in zip(StackConfig().pods, MIXED_ACCELERATORS, strict=True)
    )
