"""The scheduler's contract: plain objects in, a decision out.

The ext_proc server, the shared-view code and the discrete-event simulation in
``bench/`` all drive the scheduler through these types only, so the code measured in
simulation is the code that runs behind Envoy. Nothing here touches gRPC, NATS or the
wall clock: time is always passed in as ``now`` (seconds, same base as snapshot ``ts``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shared.schemas import EndpointSnapshot

Criticality = Literal["Critical", "Standard", "Sheddable"]
CRITICALITIES: tuple[Criticality, ...] = ("Critical", "Standard", "Sheddable")


@dataclass(slots=True)
class RequestInfo:
    """What the scheduler knows about one request when it decides."""

    request_id: str
    model: str  # the client-facing model name
    target_model: str  # after the InferenceModel split or rewrite: a base model or a LoRA adapter
    criticality: Criticality = "Standard"
    prompt_tokens: int = 0
    prefix_hashes: list[int] = field(default_factory=list)  # shared.hashing.prefix_block_hashes
    expected_output_tokens: int = 0  # max_tokens when given, else 0 (unknown)
    # Restriction from the subset hint or the conformance header: None means every endpoint.
    candidates: frozenset[str] | None = None
    # The flow the request belongs to (x-llm-d-/x-gateway-inference-fairness-id), for flow
    # control; "" when the client named none. Priority: the InferenceObjective's (0 = unset).
    fairness_id: str = ""
    priority: int = 0


@dataclass(slots=True)
class EndpointView:
    """One endpoint as the scheduler sees it at decision time."""

    address: str  # "ip:port", the key everywhere
    snapshot: EndpointSnapshot
    received_at: float  # when this replica received the snapshot

    def metrics_age(self, now: float) -> float:
        """Age of the pod's metrics: from the collector's scrape time when known."""
        ts = self.snapshot.ts or self.received_at
        return max(0.0, now - ts)


@dataclass(slots=True)
class Decision:
    """The scheduler's answer.

    ``endpoints`` is ordered: the first is the choice, the rest are fallbacks for
    Envoy's retries. An empty list comes with ``status`` 429 (shed: the pool is
    saturated for this criticality) or 503 (no candidate endpoint) and a ``reason``.
    """

    endpoints: list[str]
    status: int = 200
    reason: str = ""
    profile: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.endpoints)


class Scheduler(Protocol):
    """What every scheduling profile offers to its callers."""

    name: str

    def schedule(self, request: RequestInfo, endpoints: Sequence[EndpointView], now: float) -> Decision:
        """Pick endpoints for ``request``. Must not raise on any input; never blocks."""
        ...

    # Accounting hooks. The local replica calls them for its own traffic; the shared
    # view (NATS) calls them for its peers' traffic, so every replica decides from the
    # same picture.
    def on_assigned(self, request: RequestInfo, address: str, now: float, *, replica: str = "") -> None: ...

    def on_completed(self, request_id: str, now: float) -> None: ...

    def on_snapshot(self, snapshot: EndpointSnapshot, now: float) -> None: ...

    def on_endpoint_removed(self, address: str, now: float) -> None: ...

    def set_peer_rank(self, index: int, count: int, unseen: float = 1.0) -> None:
        """This replica is ``index`` of ``count`` replicas sharing one view, and typically has
        not yet heard of ``unseen`` of its peers' assignments (the sharing layer knows)."""
        ...
