"""Check each accelerator profile against its source points (``infergate-sim calibrate --accelerators``).

Point kinds (``points:`` of a profile in the YAML):

* ``poisson``: a measured serving point (``qps``, ``prompt``, ``output``, ``ttft_ms``,
  ``itl_p75_ms``): the engine is driven in virtual time with Poisson arrivals, LoRA off,
  as :mod:`sim.calibrate` does for design.md §5;
* ``step_ms``: one step of ``tokens`` over ``ctx`` context tokens took ``value`` ms (a
  profiler's point, e.g. Vidur's);
* ``kv_tokens``: the KV capacity vLLM reported (``value``);
* ``roofline_decode`` / ``roofline_prefill``: datasheet points. A batch-1 decode step
  streams the fp16 weights once (bytes / bandwidth); a full 8,192-token prefill step is
  FLOP-bound (2 x parameters x tokens / dense BF16). Each is scaled by the efficiency the
  reference profile (a measured fit) shows against its own datasheet, so the check says
  "this profile is as efficient on its hardware as the reference is on its own";
* ``kv_memory``: the KV capacity 0.9 of the device memory leaves after the reference's
  non-KV overhead (weights, activations, CUDA graphs).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sim.accel import (
    PARAMS,
    WEIGHT_BYTES,
    AcceleratorProfile,
    _kv_from_memory,
    non_kv_overhead_gib,
    profiles,
)
from sim.config import EngineConfig

__all__ = ["PointResult", "check_all", "check_profile"]

DECODE_CTX = 580  # a typical context for the batch-1 decode point
PREFILL_TOKENS = 8192


@dataclass
class PointResult:
    profile: str
    kind: str
    what: str
    expected: float
    got: float
    tolerance: float

    @property
    def ok(self) -> bool:
        if self.expected == 0:
            return self.got == 0
        return abs(self.got - self.expected) <= self.tolerance * abs(self.expected) + 1e-12


def _decode_roofline_s(p: AcceleratorProfile) -> float:
    return WEIGHT_BYTES / (p.hbm_tb_s * 1e12)


def _prefill_roofline_s(p: AcceleratorProfile) -> float:
    return 2 * PARAMS * PREFILL_TOKENS / (p.bf16_dense_tflops * 1e12)


def check_profile(
    p: AcceleratorProfile, ref: AcceleratorProfile, *, n_requests: int = 3000, seed: int = 1
) -> list[PointResult]:
    cfg = p.engine_config(EngineConfig(enable_lora=False))
    out: list[PointResult] = []
    for pt in p.points:
        kind = pt.get("kind", "")
        tol = float(pt.get("tolerance", 0.1))
        if kind == "poisson":
            from sim.calibrate import run_poisson
            from sim.workloads import FixedLength

            r = run_poisson(
                cfg,
                FixedLength(int(pt["prompt"]), int(pt["output"]), random.Random(seed)),
                float(pt["qps"]),
                n_requests=n_requests,
                seed=seed,
            )
            tt = r.ttfts()
            label = f"{pt['qps']} QPS {pt['prompt']}/{pt['output']}"
            out.append(
                PointResult(p.name, kind, f"{label} TTFT ms", pt["ttft_ms"], 1e3 * sum(tt) / len(tt), tol)
            )
            out.append(
                PointResult(
                    p.name, kind, f"{label} ITL p75 ms", pt["itl_p75_ms"], 1e3 * r.itl_percentile(75), tol
                )
            )
        elif kind == "step_ms":
            got = 1e3 * cfg.step_time(int(pt["tokens"]), int(pt["ctx"]))
            out.append(
                PointResult(p.name, kind, f"step N={pt['tokens']} C={pt['ctx']} ms", pt["value"], got, tol)
            )
        elif kind == "kv_tokens":
            out.append(PointResult(p.name, kind, "KV tokens", pt["value"], p.kv_capacity_tokens, tol))
        elif kind == "roofline_decode":
            rcfg = ref.engine_config(EngineConfig(enable_lora=False))
            eff = _decode_roofline_s(ref) / rcfg.step_time(1, DECODE_CTX)
            expected = 1e3 * _decode_roofline_s(p) / eff
            out.append(
                PointResult(
                    p.name, kind, "batch-1 decode step ms", expected, 1e3 * cfg.step_time(1, DECODE_CTX), tol
                )
            )
        elif kind == "roofline_prefill":
            rcfg = ref.engine_config(EngineConfig(enable_lora=False))
            eff = _prefill_roofline_s(ref) / rcfg.step_time(PREFILL_TOKENS, PREFILL_TOKENS)
            expected = 1e3 * _prefill_roofline_s(p) / eff
            got = 1e3 * cfg.step_time(PREFILL_TOKENS, PREFILL_TOKENS)
            out.append(PointResult(p.name, kind, "8,192-token prefill step ms", expected, got, tol))
        elif kind == "kv_memory":
            expected = _kv_from_memory(p.memory_gib, non_kv_overhead_gib(ref))
            out.append(
                PointResult(p.name, kind, "KV tokens from memory", expected, p.kv_capacity_tokens, tol)
            )
        else:
            out.append(PointResult(p.name, kind or "?", f"unknown point kind {kind!r}", 1.0, 0.0, 0.0))
    return out


def check_all(
    profs: dict[str, AcceleratorProfile] | None = None, reference: str = "h100-80gb", n_requests: int = 3000
) -> list[PointResult]:
    profs = profs or profiles()
    ref = profs[reference]
    res: list[PointResult] = []
    for p in profs.values():
        res += check_profile(p, ref, n_requests=n_requests)
    return res


def report(results: list[PointResult], profs: dict[str, AcceleratorProfile], out) -> bool:
    print("| accelerator | point | source | engine | within |", file=out)
    print("|---|---|---|---|---|", file=out)
    for r in results:
        mark = "ok" if r.ok else "OUT"
        print(
            f"| {r.profile} | {r.what} | {r.expected:.4g} | {r.got:.4g} | ±{r.tolerance:.0%} {mark} |",
            file=out,
        )
    for p in profs.values():
        s = p.step
        print(
            f"{p.name}: KV {p.kv_capacity_tokens} tokens, step base {s.base_s * 1e3:.3f} ms, "
            f"floor {s.floor_s * 1e3:.3f} ms, n_base {s.n_base_s * 1e3:.3f} ms, per token "
            f"{s.per_token_s * 1e6:.2f} us, per ctx {s.per_ctx_s * 1e6:.4f} us, "
            f"${p.cost_per_hour:.2f}/h ({p.source})",
            file=out,
        )
    bad = [r for r in results if not r.ok]
    print("accelerator profiles OK" if not bad else f"{len(bad)} POINT(S) OUT OF TOLERANCE", file=out)
    return not bad
