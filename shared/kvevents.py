"""KV-cache events: vLLM's wire layout (ZMQ), and InferGate's compact forms on NATS.

**vLLM's layout** (``vllm/distributed/kv_events.py``, msgspec structs with ``array_like``,
``tag`` and ``omit_defaults``): a ZMQ message is three frames ``[topic, seq (uint64
big-endian), payload]``; the payload is a msgpack ``EventBatch = [ts, [event...],
data_parallel_rank?]`` and every event a positional array whose first element is its tag::

    ["BlockStored", block_hashes, parent_block_hash | nil, token_ids, block_size,
     lora_id | nil, medium | nil, lora_name | nil, <newer optional fields...>]
    ["BlockRemoved", block_hashes, medium | nil, <optional...>]
    ["AllBlocksCleared"]

Older vLLM versions stop earlier (no ``lora_name``, or no ``medium``), newer ones append
fields (``extra_keys``, ``group_idx``...): the decoder reads what it knows and ignores the
rest, and also accepts the map form (a struct without ``array_like``). Block hashes are
ints (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``, the default) or 32-byte digests; both are
normalized to the 64-bit int of :func:`shared.kvhash.external`. ``medium`` ``None`` means GPU.

**InferGate's forms on NATS** (msgpack maps, short keys): a :class:`KVDelta` per pod and
batch, and a :class:`KVDigest` (every block a pod holds, per tier) now and then, kept as
the last value per pod so a starting replica converges without history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared.kvhash import external

__all__ = [
    "CPU",
    "END_SEQ",
    "GPU",
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "EventBatch",
    "KVDelta",
    "KVDigest",
    "KVEventError",
    "decode_batch",
    "decode_delta",
    "decode_digest",
    "encode_batch",
    "encode_delta",
    "encode_digest",
    "seq_bytes",
    "seq_of",
]

GPU = "GPU"
CPU = "CPU"
END_SEQ = (-1).to_bytes(8, "big", signed=True)  # the replay socket's end-of-replay marker


class KVEventError(ValueError):
    """A payload that is not a KV event batch (the whole batch is dropped, never half of it)."""


@dataclass(slots=True)
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None


@dataclass(slots=True)
class BlockRemoved:
    block_hashes: list[int]
    medium: str | None = None


@dataclass(slots=True)
class AllBlocksCleared:
    pass


Event = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(slots=True)
class EventBatch:
    ts: float
    events: list[Event]
    data_parallel_rank: int | None = None


# -- vLLM's wire layout ------------------------------------------------------------------------

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


def seq_bytes(seq: int) -> bytes:
    return int(seq).to_bytes(8, "big")


def seq_of(frame: bytes) -> int:
    """A sequence frame's number (-1 for the replay end marker)."""
    if len(frame) != 8:
        raise KVEventError(f"a sequence frame has 8 bytes, got {len(frame)}")
    return int.from_bytes(frame, "big", signed=frame == END_SEQ)


def _event_fields(ev: Event) -> list[Any]:
    if isinstance(ev, BlockStored):
        out: list[Any] = [
            "BlockStored",
            ev.block_hashes,
            ev.parent_block_hash,
            ev.token_ids,
            ev.block_size,
            ev.lora_id,
            ev.medium,
            ev.lora_name,
        ]
        return out
    if isinstance(ev, BlockRemoved):
        return ["BlockRemoved", ev.block_hashes, ev.medium]
    return ["AllBlocksCleared"]


def encode_batch(batch: EventBatch) -> bytes:
    """The payload frame vLLM's publisher sends for ``batch`` (``omit_defaults``: a ``None``
    rank is left out)."""
    body: list[Any] = [batch.ts, [_event_fields(e) for e in batch.events]]
    if batch.data_parallel_rank is not None:
        body.append(batch.data_parallel_rank)
    return _enc.encode(body)


def _hash(h: Any) -> int:
    if isinstance(h, bool):
        raise KVEventError("a block hash cannot be a boolean")
    if isinstance(h, int):
        return h & ((1 << 64) - 1)
    if isinstance(h, (bytes, bytearray, memoryview)):
        return external(bytes(h))
    raise KVEventError(f"a block hash is an int or bytes, got {type(h).__name__}")


def _hashes(v: Any) -> list[int]:
    if not isinstance(v, list):
        raise KVEventError("block_hashes must be an array")
    return [_hash(h) for h in v]


def _opt_str(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    raise KVEventError(f"expected a string or nil, got {type(v).__name__}")


def _opt_int(v: Any) -> int | None:
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise KVEventError(f"expected an int or nil, got {type(v).__name__}")


_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
)
_REMOVED_FIELDS = ("block_hashes", "medium")


def _positional(raw: Any) -> tuple[str, dict[str, Any]]:
    """(tag, fields) of one event in either form."""
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        tag = raw[0]
        names = _STORED_FIELDS if tag == "BlockStored" else _REMOVED_FIELDS if tag == "BlockRemoved" else ()
        return tag, dict(zip(names, raw[1:], strict=False))
    if isinstance(raw, dict) and isinstance(raw.get("type"), str):
        return raw["type"], raw
    raise KVEventError("an event is a tagged array or a map with a 'type'")


def _event(raw: Any) -> Event | None:
    tag, f = _positional(raw)
    if tag == "BlockStored":
        if "block_hashes" not in f or "block_size" not in f:
            raise KVEventError("BlockStored needs block_hashes and block_size")
        parent = f.get("parent_block_hash")
        tokens = f.get("token_ids") or []
        if not isinstance(tokens, list):
            raise KVEventError("token_ids must be an array")
        bs = _opt_int(f["block_size"])
        return BlockStored(
            _hashes(f["block_hashes"]),
            None if parent is None else _hash(parent),
            tokens,
            bs or 0,
            _opt_int(f.get("lora_id")),
            _opt_str(f.get("medium")),
            _opt_str(f.get("lora_name")),
        )
    if tag == "BlockRemoved":
        if "block_hashes" not in f:
            raise KVEventError("BlockRemoved needs block_hashes")
        return BlockRemoved(_hashes(f["block_hashes"]), _opt_str(f.get("medium")))
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None  # an event type this version does not know: skipped, the rest still applies


def decode_batch(payload: bytes) -> EventBatch:
    """Decode one payload frame; :class:`KVEventError` for anything that is not a batch."""
    try:
        raw = _dec.decode(payload)
    except msgspec.DecodeError as exc:
        raise KVEventError(f"not msgpack: {exc}") from exc
    if isinstance(raw, dict):
        ts, events, rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list) and len(raw) >= 2:
        ts, events = raw[0], raw[1]
        rank = raw[2] if len(raw) > 2 else None
    else:
        raise KVEventError("a batch is [ts, events, rank?]")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not isinstance(events, list):
        raise KVEventError("a batch is [ts: float, events: array, rank?]")
    out = [e for e in (_event(r) for r in events) if e is not None]
    return EventBatch(float(ts), out, _opt_int(rank))


# -- InferGate's forms on NATS -----------------------------------------------------------------


@dataclass(slots=True)
class KVDelta:
    """What changed in one pod's cache since the collector's previous delta for it.

    ``seq`` counts the deltas of one collector ``epoch`` for this pod, so a receiver sees a
    lost delta (and then waits for the next digest for this pod, which it trusts). ``clear``
    means the pod dropped every block (``AllBlocksCleared``, or a restarted engine) before
    the additions. Hashes are 64-bit ints; tiers are GPU and CPU.
    """

    address: str
    epoch: str
    seq: int
    ts: float
    stored: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    stored_cpu: list[int] = field(default_factory=list)
    removed_cpu: list[int] = field(default_factory=list)
    clear: bool = False
    block_size: int = 0


@dataclass(slots=True)
class KVDigest:
    """Every block one pod holds, per tier, as of the delta numbered ``seq``."""

    address: str
    epoch: str
    seq: int
    ts: float
    gpu: list[int] = field(default_factory=list)
    cpu: list[int] = field(default_factory=list)
    block_size: int = 0
    live: bool = True  # False: the pod's event stream is down; forget it and route approximately


def encode_delta(d: KVDelta) -> bytes:
    m: dict[str, Any] = {"a": d.address, "e": d.epoch, "s": d.seq, "t": d.ts}
    for key, v in (("+", d.stored), ("-", d.removed), ("+c", d.stored_cpu), ("-c", d.removed_cpu)):
        if v:
            m[key] = v
    if d.clear:
        m["x"] = True
    if d.block_size:
        m["b"] = d.block_size
    return _enc.encode(m)


class _DeltaWire(msgspec.Struct, forbid_unknown_fields=False):
    a: str
    s: int
    e: str = ""
    t: float = 0.0
    stored: list[int] = msgspec.field(default_factory=list, name="+")
    removed: list[int] = msgspec.field(default_factory=list, name="-")
    stored_cpu: list[int] = msgspec.field(default_factory=list, name="+c")
    removed_cpu: list[int] = msgspec.field(default_factory=list, name="-c")
    x: bool = False
    b: int = 0


class _DigestWire(msgspec.Struct, forbid_unknown_fields=False):
    a: str
    s: int
    e: str = ""
    t: float = 0.0
    g: list[int] = msgspec.field(default_factory=list)
    c: list[int] = msgspec.field(default_factory=list)
    b: int = 0
    l: bool = True  # noqa: E741


# Typed decoders: the arrays of hashes are checked in C (a digest holds thousands).
_delta_dec = msgspec.msgpack.Decoder(_DeltaWire)
_digest_dec = msgspec.msgpack.Decoder(_DigestWire)


def decode_delta(data: bytes) -> KVDelta:
    try:
        m = _delta_dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KVEventError(f"not a KV delta: {exc}") from exc
    return KVDelta(m.a, m.e, m.s, m.t, m.stored, m.removed, m.stored_cpu, m.removed_cpu, m.x, m.b)


def encode_digest(d: KVDigest) -> bytes:
    m: dict[str, Any] = {"a": d.address, "e": d.epoch, "s": d.seq, "t": d.ts, "g": d.gpu, "c": d.cpu}
    if d.block_size:
        m["b"] = d.block_size
    if not d.live:
        m["l"] = False
    return _enc.encode(m)


def decode_digest(data: bytes) -> KVDigest:
    try:
        m = _digest_dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KVEventError(f"not a KV digest: {exc}") from exc
    return KVDigest(m.a, m.e, m.s, m.t, m.g, m.c, m.b, m.l)
