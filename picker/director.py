"""The director: one request's headers and body in, a destination (or an error) out.

Independent of gRPC, so the protocol layer (:mod:`picker.extproc`) only translates
Envoy messages. The director owns the request-side policy and runs one request's steps in
order, each in one place of :meth:`Director._route`:

1. **resolve**: parse the body, resolve the model (InferenceObjective/rewrite), restrict
   the candidates (subset hint, conformance header);
2. **admit**: the profile's admission (``admit(request, state)``): 503 without
   candidates, 429 when shed. With flow control on (:mod:`picker.flow`) the flow
   controller takes this step and the next: the request may wait (a :class:`Queued`
   the ext_proc stream awaits) and is scheduled only when dispatched (late binding);
3. **schedule**: the profile's scheduler (``schedule(request, state)``) picks the
   endpoint and its fallbacks;
4. **account**: the pool state counts the assignment (in-flight load, prefix index),
   the event sink publishes it to the peers.

It also keeps the in-flight registry:
every assignment it makes is released exactly once through :meth:`Director.complete`,
which the protocol layer calls on response end, error status, cancel or shutdown.
It also answers the gateway's own ``GET /v1/models`` from the view (:meth:`Director.models_list`).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from shared.errors import error_body
from shared.hashing import prefix_block_hashes
from shared.tokens import estimate_tokens

from .body import BodyError, ParsedRequest, parse_request, path_kind
from .flow.controller import NO_ENDPOINTS, SATURATED
from .flow.runner import FlowRunner, Queued, slo_seconds
from .hooks import EventSink
from .latency.headers import parse_slo_headers
from .metrics import PickerMetrics, RequestLabels
from .modellist import model_list
from .models import ModelTable, UnknownModel
from .protocol import DEFAULT_FAIRNESS_ID, MODELS_PATH, Dropped
from .scheduling.api import Admission, Decision, RequestInfo, Scheduler
from .view import PoolView

__all__ = ["Answered", "Director", "Inflight", "Queued", "Rejected", "RequestHeaders", "Routed"]

log = logging.getLogger(__name__)
reqlog = logging.getLogger("picker.requests")

_DROPPED = {
    400: Dropped.BAD_REQUEST,
    404: Dropped.UNKNOWN_MODEL,
    413: Dropped.BAD_REQUEST,
    431: Dropped.BAD_REQUEST,
    429: Dropped.SATURATED,
    503: Dropped.NO_ENDPOINTS,
}


@dataclass(slots=True)
class RequestHeaders:
    """The request headers the picker reads; everything else passes through untouched."""

    method: str = ""
    path: str = ""
    request_id: str = ""
    request_id_generated: bool = False
    rewrite: str | None = None
    objective: str | None = None
    fairness_id: str | None = None
    slo_ttft: str | None = None  # x-slo-ttft-ms / x-llm-d-slo-ttft-ms as sent; flow control's EDF deadline
    slo_tpot: str | None = None
    selection: str | None = None  # test-epp-endpoint-selection (used only with the hooks on)
    content_length: int | None = None
    count: int = 0  # header entries as Envoy sent them (pseudo-headers included)
    strip: list[str] = field(default_factory=list)  # client-sent x-gateway-destination-endpoint* keys


@dataclass(slots=True)
class Rejected:
    status: int
    body: bytes
    reason: str
    dropped: str = Dropped.INTERNAL  # the x-llm-d-request-dropped-reason value


@dataclass(slots=True)
class Answered:
    """A request the picker answers itself (``GET /v1/models``): an ImmediateResponse."""

    status: int
    body: bytes


@dataclass(slots=True)
class Inflight:
    """One routed request until its response ends."""

    info: RequestInfo
    address: str
    destination: str
    started: float  # perf_counter
    labels: RequestLabels | None = None
    decision_s: float = 0.0
    fairness_id: str = ""
    first_byte: float = 0.0
    done: bool = False


@dataclass(slots=True)
class Routed:
    destination: str  # "ip:port[,ip:port…]": the choice, then the fallbacks
    body: bytes
    inflight: Inflight
    client_model: str
    target_model: str


class Director:
    def __init__(
        self,
        *,
        view: PoolView,
        admission: Admission,
        scheduler: Scheduler,
        models: ModelTable,
        metrics: PickerMetrics,
        sink: EventSink | None = None,
        replica: str = "",
        max_body_bytes: int = 8 * 1024 * 1024,
        max_request_headers: int = 100,
        is_ready=lambda: True,
        conformance_hooks: bool = False,
        destination_header_list: bool = False,
        flow: FlowRunner | None = None,
    ) -> None:
        self.view = view
        self.state = view.state  # the pool state the view feeds: what admission and scheduling read
        self.admission = admission
        self.scheduler = scheduler
        self.models = models
        self.metrics = metrics
        self.sink = sink
        self.replica = replica
        self.max_body_bytes = max_body_bytes
        self.max_request_headers = max_request_headers
        self.is_ready = is_ready
        # Honour test-epp-endpoint-selection and echo the served endpoint (conformance only:
        # otherwise any client could pin itself to a pod).
        self.conformance_hooks = conformance_hooks
        # Put the whole list in x-gateway-destination-endpoint, not only the choice.
        self.destination_header_list = destination_header_list
        self.inflight: dict[str, Inflight] = {}
        # Flow control (picker.flow): between admission and scheduling; None = admit as before.
        self.flow = flow
        if flow is not None:
            flow.finish, flow.fail, flow.abandon = self._flow_finish, self._flow_fail, self._flow_abandon
        # The "created" of /v1/models entries: a constant, so that every replica (each with
        # its own start time) gives the same answer for the same view.
        self.created = 0

    # -- errors -----------------------------------------------------------------------------
    def reject(
        self,
        status: int,
        message: str,
        model: str = "",
        target: str = "",
        param: str | None = None,
        request_id: str = "",
        dropped: str | None = None,
        fairness_id: str = "",
        priority: int = 0,
    ) -> Rejected:
        self.metrics.error(model, target, status, fairness_id, priority)
        dropped = dropped or _DROPPED.get(status, Dropped.INTERNAL)
        if reqlog.isEnabledFor(logging.INFO):
            reqlog.info(
                "request rejected",
                extra={
                    "request_id": request_id,
                    "model": model,
                    "target_model": target,
                    "status": status,
                    "reason": message,
                    "dropped": dropped,
                },
            )
        return Rejected(status, error_body(status, message, param=param), message, dropped)

    def not_ready(self, request_id: str, model: str = "") -> Rejected:
        return self.reject(
            503, "the endpoint picker is not ready", model, request_id=request_id, dropped=Dropped.NOT_READY
        )

    def check_header_count(self, hdr: RequestHeaders, has_body: bool) -> Rejected | None:
        """431 when the headers we add would push the request past Envoy's header limit.

        Envoy checks the count after applying our mutation and, past its
        ``max_headers_count`` (100 by default), fails the request with an empty 503. Refusing
        here instead gives the client the reason (431, like Envoy's own answer to a request
        with too many headers). Counted: the headers Envoy sent us, pseudo-headers included,
        plus the ones we add (the destination; a generated request id; a content length),
        minus the ones we strip.
        """
        limit = self.max_request_headers
        if limit <= 0:
            return None
        added = 1 + int(hdr.request_id_generated) + int(has_body and hdr.content_length is None)
        if hdr.count - len(hdr.strip) + added <= limit:
            return None
        return self.reject(
            431,
            f"too many request headers: the gateway allows {limit} including its own "
            f"({hdr.count} received); send fewer headers",
            request_id=hdr.request_id,
        )

    # -- candidates -------------------------------------------------------------------------
    def _restrict(self, entries: list[str], into: set[str] | None) -> set[str]:
        eps = self.view.endpoints
        out: set[str] = set()
        for e in entries:
            e = e.strip()
            if not e:
                continue
            if e in eps:
                out.add(e)
            else:  # a bare IP means every port of it; an unknown ip:port matches nothing
                out.update(a for a in eps if a.rsplit(":", 1)[0] == e)
        return out if into is None else out & into

    def candidates(self, hdr: RequestHeaders, subset: list[str] | None) -> frozenset[str] | None:
        allowed: set[str] | None = None
        if subset is not None:
            allowed = self._restrict(subset, None)
        if hdr.selection is not None and self.conformance_hooks:
            allowed = self._restrict(hdr.selection.split(","), allowed)
        return None if allowed is None else frozenset(allowed)

    # -- routing ----------------------------------------------------------------------------
    def route(
        self, hdr: RequestHeaders, body: bytes, subset: list[str] | None
    ) -> Routed | Rejected | Answered:
        """Decide for a request with a body. Never raises: a bug becomes a 500."""
        try:
            if is_models_request(hdr):
                return self.models_answer(hdr)
            return self._route(hdr, body, subset)
        except Exception:
            log.exception("routing failed", extra={"request_id": hdr.request_id})
            return self.reject(500, "internal error in the endpoint picker", request_id=hdr.request_id)

    def _route(
        self, hdr: RequestHeaders, body: bytes, subset: list[str] | None
    ) -> Routed | Rejected | Queued:
        # 1. resolve
        t0 = time.perf_counter()
        if len(body) > self.max_body_bytes:
            return self.reject(
                413, f"request body exceeds {self.max_body_bytes} bytes", request_id=hdr.request_id
            )
        try:
            req = parse_request(body, hdr.path)
        except BodyError as exc:
            return self.reject(exc.status, exc.message, param=exc.param, request_id=hdr.request_id)
        if not self.is_ready():
            return self.not_ready(hdr.request_id, req.model)
        try:
            res = self.models.resolve(req.model, hdr.rewrite, hdr.objective)
        except UnknownModel:
            return self.reject(
                404,
                f"model {req.model!r} is not served by this pool",
                req.model,
                param="model",
                request_id=hdr.request_id,
            )
        priority = res.priority
        fairness = hdr.fairness_id or ""
        cands = self.candidates(hdr, subset)
        if cands is not None and not cands:
            return self.reject(
                503,
                "no candidate endpoints for this request",
                req.model,
                res.target,
                request_id=hdr.request_id,
                fairness_id=fairness,
                priority=priority,
            )
        info = self._info(hdr, req, res.target, res.criticality, cands)
        info.priority = priority
        try:
            info.slo_ttft_ms, info.slo_tpot_ms = parse_slo_headers(hdr.slo_ttft, hdr.slo_tpot)
        except ValueError as exc:
            return self.reject(400, str(exc), req.model, res.target, request_id=hdr.request_id)
        info.objective = hdr.objective or ""
        now = time.time()
        s0 = time.perf_counter()
        state = self.state
        state.advance(now)
        if self.flow is not None:  # 2-3. flow control: queue, then schedule at dispatch
            return self._route_flow(info, req, res.target, len(body), hdr, body, t0, s0)
        # 2. admit
        rejection = self.admission.admit(info, state)
        # 3. schedule (only an admitted request)
        decision = rejection.decision() if rejection is not None else self.scheduler.schedule(info, state)
        decision_s = time.perf_counter() - s0
        self.metrics.decision(decision_s)
        if not decision.ok:
            status = decision.status if decision.status in (429, 503) else 503
            reason = decision.reason or ("pool saturated" if status == 429 else "no candidate endpoints")
            return self.reject(
                status,
                reason,
                req.model,
                res.target,
                request_id=hdr.request_id,
                fairness_id=fairness,
                priority=priority,
            )
        # 4. account
        return self._routed(info, decision, req, res.target, decision_s, t0, now)

    def _routed(
        self,
        info: RequestInfo,
        decision: Decision,
        req: ParsedRequest,
        target: str,
        decision_s: float,
        t0: float,
        now: float,
    ) -> Routed:
        out = req.with_model(target)
        destination = ",".join(decision.endpoints)
        inflight = self._assign(info, decision.endpoints[0], destination, now)
        inflight.decision_s = decision_s
        inflight.fairness_id = info.fairness_id
        self.metrics.picker_cpu.observe(time.perf_counter() - t0)
        return Routed(destination, out, inflight, req.model, target)

    # -- flow control (picker.flow) -----------------------------------------------------------
    def _route_flow(
        self,
        info: RequestInfo,
        req: ParsedRequest,
        target: str,
        size: int,
        hdr: RequestHeaders,
        body: bytes,
        t0: float,
        s0: float,
    ) -> Routed | Rejected | Queued:
        assert self.flow is not None
        info.fairness_id = info.fairness_id or DEFAULT_FAIRNESS_ID
        ctx = (req, target, hdr.request_id, t0)
        out = self.flow.submit(info, size, ctx, body, slo_seconds(hdr.slo_ttft))
        if isinstance(out, Queued):
            return out
        decision_s = time.perf_counter() - s0
        self.metrics.decision(decision_s)
        if out.ok:
            return self._flow_finish(ctx, out, info, decision_s)
        status = out.status if out.status in (429, 503) else 503
        return self._flow_fail(ctx, status, out.reason, SATURATED if status == 429 else NO_ENDPOINTS, info)

    def _flow_finish(
        self, ctx: tuple, decision: Decision, info: RequestInfo, decision_s: float = 0.0
    ) -> Routed:
        """A request dispatched: account it now (the pump reads the count next)."""
        req, target, _, t0 = ctx
        routed = self._routed(info, decision, req, target, decision_s, t0, time.time())
        assert self.flow is not None
        self.flow.assigned(routed.inflight.address, _tokens(info))
        return routed

    def _flow_fail(
        self, ctx: tuple, status: int, reason: str, dropped: str, info: RequestInfo | None = None
    ) -> Rejected:
        req, target, rid, _ = ctx
        fairness, priority = (info.fairness_id, info.priority) if info is not None else ("", 0)
        return self.reject(
            status, reason, req.model, target, request_id=rid, dropped=dropped,
            fairness_id=fairness, priority=priority,
        )  # fmt: skip

    def _flow_abandon(self, routed: Routed) -> None:
        self.complete(routed.inflight, 499)

    async def wait_queued(self, q: Queued) -> Routed | Rejected:
        """The outcome of a queued request (the ext_proc stream awaits it)."""
        try:
            return await q.future
        except Exception:
            log.exception("flow control failed a queued request", extra={"request_id": q.context[2]})
            return self._flow_fail(q.context, 500, "internal error in flow control", Dropped.INTERNAL)

    def cancel_queued(self, q: Queued) -> None:
        """The stream closed while the request waited: it leaves the queue now."""
        if self.flow is not None:
            self.flow.cancel(q)

    def _info(
        self,
        hdr: RequestHeaders,
        req: ParsedRequest,
        target: str,
        criticality: str,
        cands: frozenset[str] | None,
    ) -> RequestInfo:
        text = req.prompt_text
        rid = hdr.request_id
        if rid in self.inflight:  # a client reused an id: keep local accounting unambiguous
            rid = f"{rid}/{uuid.uuid4().hex[:8]}"
        return RequestInfo(
            request_id=rid,
            model=req.model,
            target_model=target,
            criticality=criticality,  # type: ignore[arg-type]
            prompt_tokens=req.prompt_tokens or estimate_tokens(text),
            prefix_hashes=prefix_block_hashes(target, text) if text else [],
            expected_output_tokens=req.max_tokens,
            candidates=cands,
            fairness_id=hdr.fairness_id or "",
            prompt_text=text,
            messages=req.messages,
        )

    def _assign(self, info: RequestInfo, address: str, destination: str, now: float) -> Inflight:
        labels = self.metrics.labels(info.model, info.target_model, info.fairness_id, info.priority)
        inflight = Inflight(info, address, destination, time.perf_counter(), labels)
        self.inflight[info.request_id] = inflight
        try:
            self.state.on_assigned(info, address, now, replica=self.replica)
        except Exception:
            log.exception("pool state on_assigned failed", extra={"request_id": info.request_id})
        if self.sink is not None:
            try:
                self.sink.on_local_assignment(info, address, now)
            except Exception:
                log.exception("event sink failed on assignment", extra={"request_id": info.request_id})
        self.metrics.assigned(labels)
        return inflight

    # -- the gateway's own GET /v1/models -------------------------------------------------------
    def models_answer(self, hdr: RequestHeaders) -> Answered | Rejected:
        if not self.is_ready():
            return self.not_ready(hdr.request_id)
        return Answered(200, self.models_list())

    def models_list(self) -> bytes:
        """OpenAI's model list from the picker's view (:func:`picker.modellist.model_list`)."""
        names_of = getattr(self.models, "client_names", None)
        client = names_of() if names_of is not None else list(self.models.by_model)
        return model_list(client, self.view.list(), self.created)

    def route_headers_only(
        self, hdr: RequestHeaders, subset: list[str] | None
    ) -> tuple[str, str] | Rejected | Answered:
        """A request without a body: ``GET /v1/models`` is answered here, an inference call
        (``POST …/completions``) is a 400; others go to any ready endpoint.

        No model work is involved, so the scheduler and the accounting are bypassed: the
        least busy ready candidate (fresh metrics first) answers. Returns the
        (destination, address) pair.
        """
        try:
            if is_models_request(hdr):
                return self.models_answer(hdr)
            if path_kind(hdr.path) != "other" and hdr.method not in ("GET", "HEAD", "OPTIONS"):
                # An inference call without a body (Content-Length: 0): ours to refuse, the
                # pod would only answer the same 400 after a pointless trip.
                return self.reject(400, "request body is empty", request_id=hdr.request_id)
            if not self.is_ready():
                return self.not_ready(hdr.request_id)
            cands = self.candidates(hdr, subset)
            now = time.time()
            best = None
            best_key: tuple = ()
            for ev in self.view.list():
                if cands is not None and ev.address not in cands:
                    continue
                s = ev.snapshot
                key = (
                    not (s.ready and s.healthy),
                    ev.metrics_age(now) > self.view.staleness,
                    s.waiting + s.running,
                )
                if best is None or key < best_key:
                    best, best_key = ev, key
            if best is None:
                return self.reject(503, "no candidate endpoints for this request", request_id=hdr.request_id)
            return best.address, best.address
        except Exception:
            log.exception("headers-only routing failed", extra={"request_id": hdr.request_id})
            return self.reject(500, "internal error in the endpoint picker", request_id=hdr.request_id)

    # -- completion -------------------------------------------------------------------------
    def first_byte(self, inflight: Inflight) -> None:
        if not inflight.first_byte:
            inflight.first_byte = time.perf_counter()

    def complete(
        self, inflight: Inflight, status: int, prompt_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        """Release an assignment exactly once and record its outcome."""
        if inflight.done:
            return
        inflight.done = True
        info = inflight.info
        end = time.perf_counter()
        latency = end - inflight.started
        ttft = inflight.first_byte - inflight.started if inflight.first_byte else 0.0
        now = time.time()
        self.inflight.pop(info.request_id, None)
        try:
            self.state.on_completed(
                info.request_id,
                now,
                replica=self.replica,
                status=status,
                ttft_s=ttft,
                latency_s=latency,
                output_tokens=output_tokens,
            )
        except Exception:
            log.exception("pool state on_completed failed", extra={"request_id": info.request_id})
        if self.flow is not None:
            self.flow.completed(info, inflight.address, _tokens(info), output_tokens, now)
        if self.sink is not None:
            try:
                self.sink.on_local_completion(
                    info,
                    inflight.address,
                    status,
                    prompt_tokens or info.prompt_tokens,
                    output_tokens,
                    latency,
                    ttft,
                    now,
                )
            except Exception:
                log.exception("event sink failed on completion", extra={"request_id": info.request_id})
        labels = inflight.labels or self.metrics.labels(
            info.model, info.target_model, info.fairness_id, info.priority
        )
        self.metrics.completed(
            labels, status, latency, prompt_tokens or info.prompt_tokens, output_tokens, ttft
        )
        if not reqlog.isEnabledFor(logging.INFO):
            return
        reqlog.info(
            "request done",
            extra={
                "request_id": info.request_id,
                "model": info.model,
                "target_model": info.target_model,
                "criticality": info.criticality,
                "priority": info.priority,
                "fairness_id": inflight.fairness_id,
                "endpoint": inflight.address,
                "status": status,
                "decision_us": round(inflight.decision_s * 1e6, 1),
                "latency_s": round(latency, 6),
                "ttft_s": round(ttft, 6),
                "prompt_tokens": prompt_tokens or info.prompt_tokens,
                "output_tokens": output_tokens,
            },
        )

    def close_all(self, status: int = 499) -> None:
        """Shutdown: release whatever is still in flight."""
        for inflight in list(self.inflight.values()):
            self.complete(inflight, status)


def _tokens(info: RequestInfo) -> int:
    return info.prompt_tokens + max(0, info.expected_output_tokens)


def new_request_id() -> str:
    return str(uuid.uuid4())


def is_models_request(hdr: RequestHeaders) -> bool:
    """``GET /v1/models`` (query string and a trailing slash ignored)."""
    return hdr.method == "GET" and hdr.path.split("?", 1)[0].rstrip("/") == MODELS_PATH
