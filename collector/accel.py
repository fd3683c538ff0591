"""An endpoint's accelerator and cost per hour: from its pod's labels/annotations or the targets file.

Kubernetes: the pod label (or annotation) ``infergate.io/accelerator`` names what the pod
runs on (``h100-80gb``; any label-like value), the annotation (or label)
``infergate.io/cost-per-hour`` gives its price per hour as a decimal number. The values
travel in every :class:`~shared.schemas.EndpointSnapshot` (``accelerator``,
``cost_per_hour``); pickers learn latency per accelerator and route for cost.

Client-independent, but still operator input: a bad value is logged by the caller and
ignored (the endpoint is scraped as "unknown"), never allowed to stop discovery.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ACCELERATOR_KEY",
    "COST_KEY",
    "MAX_COST_PER_HOUR",
    "accelerator_value",
    "cost_value",
    "from_pod_metadata",
]

ACCELERATOR_KEY = "infergate.io/accelerator"
COST_KEY = "infergate.io/cost-per-hour"
MAX_COST_PER_HOUR = 1e6
# A Kubernetes label value: at most 63 characters, alphanumerics and - _ . inside.
_NAME = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")


def accelerator_value(value: Any, where: str) -> str:
    """A valid accelerator name ("" when absent); ValueError names ``where``."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{where}: {value!r} is not a label value (<= 63 of [A-Za-z0-9_.-])")
    return value


def cost_value(value: Any, where: str) -> float:
    """A finite price per hour in [0, 1e6] (0.0 when absent); strings are parsed."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise ValueError(f"{where}: must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: must be a number, got {value!r}") from None
    if not math.isfinite(v) or not 0.0 <= v <= MAX_COST_PER_HOUR:
        raise ValueError(f"{where}: must be between 0 and {MAX_COST_PER_HOUR:g}, got {value!r}")
    return v


def from_pod_metadata(meta: Mapping[str, Any]) -> tuple[str, float, list[str]]:
    """(accelerator, cost per hour, problems) from a pod's ``metadata``; a label wins over an annotation."""
    labels = meta.get("labels") or {}
    notes = meta.get("annotations") or {}
    problems: list[str] = []
    accel, cost = "", 0.0
    raw = labels.get(ACCELERATOR_KEY) or notes.get(ACCELERATOR_KEY)
    try:
        accel = accelerator_value(raw, ACCELERATOR_KEY)
    except ValueError as exc:
        problems.append(str(exc))
    raw = notes.get(COST_KEY) or labels.get(COST_KEY)
    try:
        cost = cost_value(raw, COST_KEY)
    except ValueError as exc:
        problems.append(str(exc))
    return accel, cost, problems
