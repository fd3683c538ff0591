"""Endpoint snapshots for tests: one call with sensible defaults for everything but the address."""

from __future__ import annotations

from typing import Any

from shared.schemas import EndpointSnapshot, now


def snapshot(address: str, pool: str = "pool", namespace: str = "default", **kw: Any) -> EndpointSnapshot:
    """A fresh snapshot of the pod at ``address`` (pod name derived from it unless given)."""
    pod = kw.pop("pod", "pod-" + address.replace(".", "-").replace(":", "-"))
    kw.setdefault("ts", now())
    kw.setdefault("seq", 1)
    kw.setdefault("epoch", "e1")
    kw.setdefault("model", "base")
    return EndpointSnapshot(namespace=namespace, pool=pool, pod=pod, address=address, **kw)
