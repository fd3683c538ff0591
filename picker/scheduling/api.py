"""The scheduler's contract: plain objects in, a decision out.

The director, the shared-view code and the discrete-event simulation in ``bench/`` all
drive scheduling through these types, so the code measured in simulation is the code
that runs behind Envoy. Three steps, three owners: the pool state
(:class:`~.pool.PoolState`: endpoints, in-flight load, prefix index, peer rank, the
clock) is fed by the bus side; :class:`Admission` decides whether a request may be
scheduled; the :class:`Scheduler` chooses among the candidates. Nothing here touches
gRPC, NATS or the wall clock: time is the state's ``now`` (seconds, same base as
snapshot ``ts``), advanced by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from shared.schemas import EndpointSnapshot

if TYPE_CHECKING:
    from .pool import PoolState

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
    # The prompt as text, for plugins that tokenize it (precise-prefix); "" when unknown.
    prompt_text: str = ""
    # A chat's messages as sent (precise-prefix renders the model's chat template); None otherwise.
    messages: list[Any] | None = None
    # Latency objectives from x-slo-ttft-ms / x-slo-tpot-ms (llm-d: x-llm-d-slo-*), in ms;
    # 0 = none given (an SLO-aware plugin may apply its per-objective default). ``objective``
    # is the InferenceObjective's name (x-gateway-inference-objective), "" when none.
    slo_ttft_ms: float = 0.0
    slo_tpot_ms: float = 0.0
    objective: str = ""


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


@dataclass(slots=True, frozen=True)
class Rejection:
    """Admission's answer when a request must not be scheduled: 429 (shed) or 503 (no candidate)."""

    status: int
    reason: str
    profile: str = ""

    def decision(self) -> Decision:
        return Decision([], self.status, self.reason, self.profile)


class Admission(Protocol):
    """Whether a request may be scheduled now; the step before the scheduler.

    ``admit`` reads the pool state (time included: ``state.now``) and never raises. It is
    the seam the flow controller (issue #16) takes over: queueing, fairness and a
    pluggable saturation detector sit behind this one call.
    """

    def admit(self, request: RequestInfo, state: PoolState) -> Rejection | None: ...


class Scheduler(Protocol):
    """Selection: one admitted request and the pool state in, an ordered choice out."""

    name: str

    def schedule(self, request: RequestInfo, state: PoolState) -> Decision:
        """Pick endpoints for ``request`` at ``state.now``. Must not raise on any input; never blocks."""
        ...
