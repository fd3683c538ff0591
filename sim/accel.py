"""Accelerator profiles: the hardware part of the engine's step time and its KV capacity.

The engine's step model (design.md §5) was fit on one H100 80 GB. A heterogeneous pool
needs the same model on other GPUs; rather than invent numbers, a profile either gives its
coefficients (a fit to its own measurements) or is *derived* from a reference profile by a
roofline transfer: the memory-bound terms of the step (base, floor, the batch's fixed part,
the per-context-token attention reads) scale with the HBM bandwidth ratio, the
compute-bound per-token term with the dense BF16 ratio, and the KV capacity is what vLLM's
``gpu_memory_utilization`` (0.9) leaves after the reference's own non-KV overhead.

Profiles live in ``sim/accelerators.yaml`` (built in) and in any YAML file of the same
shape (:func:`load_profiles`). ``infergate-sim calibrate --accelerators`` checks each against
its ``points`` (:mod:`sim.accel_check`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sim.config import EngineConfig

__all__ = [
    "BUILTIN_FILE",
    "GPU_MEMORY_UTILIZATION",
    "KV_BYTES_PER_TOKEN",
    "WEIGHT_BYTES",
    "AcceleratorProfile",
    "StepCoefficients",
    "load_profiles",
    "profile",
    "profiles",
]

BUILTIN_FILE = Path(__file__).with_name("accelerators.yaml")
# Llama-2-7B, fp16: 6.74e9 parameters; K and V of 32 layers x 4,096 dims x 2 bytes per token.
PARAMS = 6.74e9
WEIGHT_BYTES = 2 * PARAMS
KV_BYTES_PER_TOKEN = 2 * 32 * 4096 * 2
GPU_MEMORY_UTILIZATION = 0.9
GIB = 1 << 30


@dataclass(frozen=True)
class StepCoefficients:
    """``T = base + max(floor, n_base + per_token * N) + per_ctx * C`` (before the software factors)."""

    base_s: float
    floor_s: float
    n_base_s: float
    per_token_s: float
    per_ctx_s: float

    def time(self, n_tokens: int, ctx_tokens: int) -> float:
        return (
            self.base_s
            + max(self.floor_s, self.n_base_s + self.per_token_s * n_tokens)
            + (self.per_ctx_s * ctx_tokens)
        )


@dataclass(frozen=True)
class AcceleratorProfile:
    name: str
    display: str
    memory_gib: float
    hbm_tb_s: float
    bf16_dense_tflops: float
    cost_per_hour: float
    kv_capacity_tokens: int
    step: StepCoefficients
    source: str = ""
    derived_from: str = ""
    points: tuple[dict, ...] = field(default=())

    def engine_config(self, base: EngineConfig | None = None, **overrides: Any) -> EngineConfig:
        """An :class:`EngineConfig` on this accelerator (software settings from ``base``)."""
        s = self.step
        cfg = replace(
            base or EngineConfig(),
            kv_capacity_tokens=self.kv_capacity_tokens,
            step_base_s=s.base_s,
            step_floor_s=s.floor_s,
            step_n_base_s=s.n_base_s,
            step_per_token_s=s.per_token_s,
            step_per_ctx_s=s.per_ctx_s,
        )
        return replace(cfg, **overrides) if overrides else cfg


def _kv_from_memory(memory_gib: float, overhead_gib: float, block: int = 16) -> int:
    """KV tokens vLLM would allocate: 0.9 of memory minus weights and activations, whole blocks."""
    free = (GPU_MEMORY_UTILIZATION * memory_gib - overhead_gib) * GIB
    return max(0, int(free // KV_BYTES_PER_TOKEN) // block * block)


def non_kv_overhead_gib(p: AcceleratorProfile) -> float:
    """What a profile's KV capacity leaves for weights and activations at 0.9 utilization."""
    return GPU_MEMORY_UTILIZATION * p.memory_gib - p.kv_capacity_tokens * KV_BYTES_PER_TOKEN / GIB


def derive(ref: AcceleratorProfile, item: dict) -> tuple[StepCoefficients, int]:
    """The roofline transfer of ``ref``'s fit to the hardware described by ``item``."""
    bw = ref.hbm_tb_s / float(item["hbm_tb_s"])
    fl = ref.bf16_dense_tflops / float(item["bf16_dense_tflops"])
    s = ref.step
    step = StepCoefficients(
        base_s=s.base_s * bw,
        floor_s=s.floor_s * bw,
        n_base_s=s.n_base_s * bw,
        per_token_s=s.per_token_s * fl,
        per_ctx_s=s.per_ctx_s * bw,
    )
    kv = _kv_from_memory(float(item["memory_gib"]), non_kv_overhead_gib(ref))
    return step, kv


class ProfileError(ValueError):
    """A profile file is malformed; the message names the profile and field."""


def _parse(items: list, known: dict[str, AcceleratorProfile], where: str) -> dict[str, AcceleratorProfile]:
    out: dict[str, AcceleratorProfile] = {}
    for i, it in enumerate(items):
        at = f"{where}: profiles[{i}]"
        if not isinstance(it, dict) or not isinstance(it.get("name"), str) or not it["name"]:
            raise ProfileError(f"{at}: needs a name")
        name = it["name"]
        try:
            for key in ("memory_gib", "hbm_tb_s", "bf16_dense_tflops"):
                if float(it[key]) <= 0:
                    raise ProfileError(f"{at}.{key}: must be > 0")
            base = it.get("derive_from", "")
            if "step" in it:
                st = it["step"]
                step = StepCoefficients(**{k: float(st[k]) for k in StepCoefficients.__dataclass_fields__})
                kv = int(it["kv_capacity_tokens"])
            elif base:
                ref = out.get(base) or known.get(base)
                if ref is None:
                    raise ProfileError(f"{at}.derive_from: unknown profile {base!r}")
                step, kv = derive(ref, it)
                kv = int(it.get("kv_capacity_tokens", kv))
            else:
                raise ProfileError(f"{at}: give `step` and `kv_capacity_tokens`, or `derive_from`")
            if kv < 16 or min(vars(step).values()) < 0:
                raise ProfileError(f"{at}: KV capacity and step coefficients must be positive")
            out[name] = AcceleratorProfile(
                name=name,
                display=str(it.get("display", name)),
                memory_gib=float(it["memory_gib"]),
                hbm_tb_s=float(it["hbm_tb_s"]),
                bf16_dense_tflops=float(it["bf16_dense_tflops"]),
                cost_per_hour=float(it.get("cost_per_hour", 0.0)),
                kv_capacity_tokens=kv,
                step=step,
                source=str(it.get("source", "")),
                derived_from=base if "step" not in it else "",
                points=tuple(it.get("points", []) or []),
            )
        except ProfileError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{at} ({name}): {exc!r}") from exc
    return out


def load_profiles(*paths: str | os.PathLike, builtin: bool = True) -> dict[str, AcceleratorProfile]:
    """The built-in profiles, then each file's (a later name replaces an earlier one)."""
    import yaml

    files = ([BUILTIN_FILE] if builtin else []) + [Path(p) for p in paths]
    known: dict[str, AcceleratorProfile] = {}
    for f in files:
        doc = yaml.safe_load(Path(f).read_text())
        items = doc.get("profiles", []) if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise ProfileError(f"{f}: expected a list of profiles")
        known.update(_parse(items, known, str(f)))
    return known


_BUILTIN: dict[str, AcceleratorProfile] | None = None


def profiles() -> dict[str, AcceleratorProfile]:
    """The built-in profiles (parsed once)."""
    global _BUILTIN
    if _BUILTIN is None:
        _BUILTIN = load_profiles()
    return _BUILTIN


def profile(name: str) -> AcceleratorProfile:
    try:
        return profiles()[name]
    except KeyError:
        raise KeyError(f"unknown accelerator {name!r} (known: {', '.join(sorted(profiles()))})") from None
