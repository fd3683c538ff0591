"""The SLO request headers: x-slo-ttft-ms / x-slo-tpot-ms (llm-d: x-llm-d-slo-*), in milliseconds."""

from __future__ import annotations

import math

__all__ = ["MAX_SLO_MS", "parse_slo_headers"]

MAX_SLO_MS = 3_600_000.0  # an hour: anything larger is a client bug, not an objective


def _one(value: str | None, name: str) -> float:
    if value is None or value == "":
        return 0.0
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of milliseconds, got {value[:40]!r}") from None
    if not math.isfinite(v) or v <= 0 or v > MAX_SLO_MS:
        raise ValueError(f"{name} must be > 0 and <= {MAX_SLO_MS:g} ms, got {value[:40]!r}")
    return v


def parse_slo_headers(ttft: str | None, tpot: str | None) -> tuple[float, float]:
    """(TTFT ms, TPOT ms), 0 for an absent header; ValueError (a 400) for a malformed one."""
    return _one(ttft, "x-slo-ttft-ms"), _one(tpot, "x-slo-tpot-ms")
