"""Kubernetes wire formats the External Metrics API needs: Quantity strings and RFC 3339 times.

The HPA parses ``value`` with ``resource.ParseQuantity``. Whole numbers are written
plainly (``12``); anything else in thousandths (``1500m``), which is the precision the
HPA itself works in (it compares ``MilliValue()``s), so nothing the HPA could use is lost.
"""

from __future__ import annotations

import math
import time


def quantity(value: float) -> str:
    """Format a non-negative float as a canonical Kubernetes Quantity (``12``, ``1500m``, ``0``)."""
    if not math.isfinite(value):
        raise ValueError(f"a quantity must be finite, not {value!r}")
    milli = round(value * 1000)
    if milli % 1000 == 0:
        return str(milli // 1000)
    return f"{milli}m"


def parse_quantity(text: str) -> float:
    """Read back what :func:`quantity` writes (plus plain decimals); tests and the bench use it."""
    if text.endswith("m"):
        return int(text[:-1]) / 1000
    return float(text)


def rfc3339(ts: float) -> str:
    """Seconds-precision UTC RFC 3339, as ``metav1.Time`` marshals it (``2026-01-02T03:04:05Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
