"""Wire schemas carried over NATS, encoded as msgpack by msgspec.

Every message carries ``v`` (the schema version) and is tagged with ``kind`` so one
decoder can read everything published on a subject family. Decoders ignore unknown
fields, so a newer writer can add fields during a rolling upgrade without breaking an
older reader. A payload that does not decode is counted and dropped by
:class:`SafeDecoder`; it is never raised into a subscriber's callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

SCHEMA_VERSION = 1


class _Message(msgspec.Struct, kw_only=True, tag_field="kind", omit_defaults=True, gc=False):
    """Base for all bus messages: versioned, tagged, unknown fields ignored.

    ``gc=False``: a message holds strings, numbers and lists of them, never itself, so
    it cannot be part of a reference cycle; untracked, the thousands of snapshots a
    picker holds and replaces every second are not walked by every garbage collection
    (at 1,000 endpoints young-generation collections of ~9,000 objects took 2-3 ms).
    """

    v: int = SCHEMA_VERSION


class LoraState(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """The LoRA adapters a model server reports in ``vllm:lora_requests_info``."""

    running: list[str] = []
    waiting: list[str] = []
    max_lora: int = 0


class EndpointSnapshot(_Message, tag="snap"):
    """The state of one model-server endpoint (pod IP x target port) at scrape time.

    ``seq`` increases by one per publish from one collector incarnation; ``epoch``
    identifies that incarnation, so a restarted collector's low sequence numbers are
    not mistaken for reordered messages. ``ts`` is the collector's wall-clock time of
    the scrape, in seconds, from which readers compute the metric age.
    """

    namespace: str
    pool: str
    pod: str
    address: str  # "ip:port"
    node: str = ""
    ready: bool = True
    healthy: bool = True  # False after N consecutive scrape failures
    scrape_error: str = ""
    consecutive_failures: int = 0
    model: str = ""  # the base model the server reports
    engine: str = ""  # the model server's kind, from its metrics page: "vllm", "sglang" ("" = unknown)
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0  # 0..1
    kv_capacity_tokens: int = 0  # num_gpu_blocks * block_size
    block_size: int = 16
    prefix_queries: float = 0.0  # counters, tokens
    prefix_hits: float = 0.0
    preemptions: float = 0.0
    lora: LoraState = msgspec.field(default_factory=LoraState)
    # Every model name the server answers to (its base model and the LoRA adapters it has
    # loaded), from /v1/models; empty when unknown. The metrics only name adapters that are
    # running or waiting, so this is how a picker avoids sending a request for an adapter
    # to a server that would answer 404.
    served_models: list[str] = []
    # What the endpoint runs on, from the pod's label/annotation or the targets file
    # (collector/README.md): the accelerator's name ("" = unknown) and its price per hour
    # (any currency, 0 = unknown). Latency prediction learns per accelerator; SLO routing
    # prefers the cheapest endpoint predicted to meet the request's SLO.
    accelerator: str = ""
    cost_per_hour: float = 0.0
    ts: float = 0.0
    seq: int = 0
    epoch: str = ""
    collector: str = ""


class Tombstone(_Message, tag="gone"):
    """An endpoint left the pool (pod deleted, unready, or no longer selected)."""

    namespace: str
    pool: str
    pod: str
    address: str
    reason: str = ""
    ts: float = 0.0
    seq: int = 0
    epoch: str = ""
    collector: str = ""


class Assignment(_Message, tag="assign"):
    """A picker replica sent a request to an endpoint.

    Peers add it to their in-flight accounting and prefix index; the autoscaler counts
    arrivals. ``prefix_hashes`` are the deterministic chained block hashes of
    :mod:`shared.hashing`, so every replica indexes the same prompt identically.
    """

    request_id: str
    replica: str
    address: str
    model: str  # client-facing model name
    target_model: str  # after the InferenceModel split / rewrite
    pool: str = ""
    namespace: str = ""
    criticality: str = "Standard"
    prompt_tokens: int = 0
    expected_output_tokens: int = 0
    prefix_hashes: list[int] = []
    ts: float = 0.0


class Completion(_Message, tag="done"):
    """A request finished (or failed, or was cancelled): release its in-flight entry."""

    request_id: str
    replica: str
    address: str
    model: str = ""
    target_model: str = ""
    pool: str = ""
    namespace: str = ""
    status: int = 200
    prompt_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    ttft_s: float = 0.0
    ts: float = 0.0


class EventBatch(_Message, tag="batch"):
    """Several assignment/completion events in one NATS message, to bound bus load."""

    replica: str
    events: list[Assignment | Completion] = []
    ts: float = 0.0
    # A random id per publishing process: a replica that sees a batch on its own subject with
    # another id knows a second live replica claims its name (older readers ignore the field).
    instance: str = ""


EndpointMessage = EndpointSnapshot | Tombstone
PickerEvent = Assignment | Completion | EventBatch
AnyMessage = EndpointSnapshot | Tombstone | Assignment | Completion | EventBatch

_encoder = msgspec.msgpack.Encoder()


def encode(message: AnyMessage) -> bytes:
    """Encode any bus message to msgpack bytes."""
    return _encoder.encode(message)


def now() -> float:
    """Wall-clock seconds, the time base every message's ``ts`` uses."""
    return time.time()


T = TypeVar("T")


class SafeDecoder(Generic[T]):
    """A msgpack decoder for one message type (or union) that never raises.

    Bad payloads are counted in ``failures`` and reported through ``on_error`` (for a
    log line or a Prometheus counter), then dropped.
    """

    def __init__(self, type_: type[T], on_error: Callable[[bytes, Exception], None] | None = None) -> None:
        self._decoder = msgspec.msgpack.Decoder(type_)
        self._on_error = on_error
        self.failures = 0

    def decode(self, data: bytes) -> T | None:
        try:
            return self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.failures += 1
            if self._on_error is not None:
                self._on_error(data, exc)
            return None


def endpoint_decoder(on_error: Callable[[bytes, Exception], None] | None = None) -> SafeDecoder:
    """Decoder for the endpoint subjects: snapshots and tombstones."""
    return SafeDecoder(EndpointMessage, on_error)  # type: ignore[arg-type]


def event_decoder(on_error: Callable[[bytes, Exception], None] | None = None) -> SafeDecoder:
    """Decoder for the picker event subjects: single events or batches."""
    return SafeDecoder(PickerEvent, on_error)  # type: ignore[arg-type]
