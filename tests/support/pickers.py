"""A picker for in-process tests: loopback addresses, ports the OS picks, the test models.

Every in-process picker test needs the same loopback configuration (port 0 everywhere, so
parallel tests never collide) and most need the same three models; they live here once.
"""

from __future__ import annotations

from typing import Any

from picker.config import PickerConfig
from picker.models import ModelTable
from shared.crds import InferenceModel, TargetModel

LOOPBACK = dict(
    pool_name="pool",
    grpc_host="127.0.0.1",
    grpc_port=0,
    grpc_health_port=0,
    metrics_host="127.0.0.1",
    metrics_port=0,
)


def loopback_config(**overrides: Any) -> PickerConfig:
    """A PickerConfig for pool ``pool`` on 127.0.0.1 with OS-assigned ports; ``overrides`` win."""
    return PickerConfig(**{**LOOPBACK, **overrides})


def standard_models(policy: str = "reject") -> ModelTable:
    """``chat`` (Critical, rewritten to ``base-v2``), ``cheap`` (Sheddable), ``base`` (Standard)."""
    return ModelTable(
        [
            InferenceModel("chat", "default", "chat", "pool", "Critical", (TargetModel("base-v2"),)),
            InferenceModel("cheap", "default", "cheap", "pool", "Sheddable", ()),
            InferenceModel("base", "default", "base", "pool", "Standard", ()),
        ],
        "pool",
        policy,
    )
