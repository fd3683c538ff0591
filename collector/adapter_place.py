"""Pool-wide placement of one adapter: the shared record and the pure decision on it.

Every adapter of a pool has one record in the JetStream KV bucket (key
``<ns>.<pool>.<adapter>``, see :func:`record_key`): the servers that hold it (a *holder*
per server, ``pod:port``), each with the collector that owns that server, when it was
claimed, when its owner last confirmed it, and its state (``loading``, ``loaded``,
``releasing``). Collectors change a record only by compare-and-set on its revision, so
when two collectors race for the last replica one of them wins and the other reads the
new record and stops: the count never overshoots.

:func:`plan` is what one collector does to one record in one pass, with no I/O:

* drop holders whose owner stopped confirming them (``seen`` older than ``ttl``: a dead
  collector) and its own holders whose server left this node;
* mark its own newest holders ``releasing`` when the record has more than ``replicas``;
* claim one of its servers when the record has fewer (a server already serving the
  adapter first, then the one with the most free adapter slots), at most one per pass,
  and a second one of its own only after the record stayed short for ``spread_passes``
  passes, which lets collectors on other nodes take their share first;
* refresh ``seen`` of its holders;
* adopt an orphan (the adapter loaded on one of its servers with no holder) while the
  record is short, and release it once the record is full.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from shared.kvstore import kv_token

LOADING, LOADED, RELEASING = "loading", "loaded", "releasing"


class Holder(msgspec.Struct, kw_only=True):
    collector: str
    address: str
    claimed: float
    seen: float
    state: str = LOADING


class Record(msgspec.Struct, kw_only=True):
    replicas: int = 0  # what the last writer wanted (informational: each reader uses its spec)
    holders: dict[str, Holder] = {}


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Record)


def encode(record: Record) -> bytes:
    return _enc.encode(record)


def decode(data: bytes) -> Record:
    """A record from the bucket; an unreadable one counts as empty (it is rewritten)."""
    try:
        return _dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Record()


def record_key(namespace: str, pool: str, adapter: str) -> str:
    return f"{kv_token(namespace)}.{kv_token(pool)}.{kv_token(adapter)}"


def pool_prefix(namespace: str, pool: str) -> str:
    return f"{kv_token(namespace)}.{kv_token(pool)}."


@dataclass(frozen=True, slots=True)
class Candidate:
    """One of this collector's servers, as the claim step sees it."""

    server: str  # "pod:port"
    address: str
    serving: bool  # the adapter is loaded there already
    free_slots: int  # adapter slots left (capacity minus loaded and pending)


@dataclass(slots=True)
class Plan:
    record: Record
    changed: bool = False
    claimed: str | None = None
    released: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def plan(
    record: Record | None,
    *,
    me: str,
    replicas: int,
    now: float,
    ttl: float,
    local: set[str],
    candidates: list[Candidate],
    loaded_here: set[str],
    short_passes: int = 0,
    spread_passes: int = 2,
) -> Plan:
    """One collector's change to one adapter's record (see the module docstring)."""
    rec = record or Record()
    holders = {k: msgspec.structs.replace(h) for k, h in rec.holders.items()}
    out = Plan(Record(replicas=replicas, holders=holders), changed=record is None or rec.replicas != replicas)
    for server, h in list(holders.items()):
        mine = h.collector == me
        if (mine and server not in local) or (not mine and now - h.seen > ttl):
            del holders[server]
            out.dropped.append(server)
            out.changed = True
        elif mine:
            if h.state == LOADING and server in loaded_here:
                h.state = LOADED
                out.changed = True
            if now - h.seen > ttl / 3:
                h.seen = now
                out.changed = True
    active = sorted((h.claimed, s) for s, h in holders.items() if h.state != RELEASING)
    if len(active) > replicas:
        for _, server in active[replicas:]:
            h = holders[server]
            if h.collector == me:
                h.state = RELEASING
                out.released.append(server)
                out.changed = True
    elif len(active) < replicas:
        have_mine = any(h.collector == me for h in holders.values())
        if not have_mine or short_passes >= spread_passes:
            pool = [c for c in candidates if c.server not in holders and (c.serving or c.free_slots > 0)]
            pool.sort(key=lambda c: (not c.serving, -c.free_slots, c.server))
            if pool:
                c = pool[0]
                holders[c.server] = Holder(
                    collector=me,
                    address=c.address,
                    claimed=now,
                    seen=now,
                    state=LOADED if c.serving else LOADING,
                )
                out.claimed = c.server
                out.changed = True
    # a releasing holder that is wanted again (replicas raised) becomes active again
    if len(active) < replicas and out.claimed is None:
        for server, h in sorted(holders.items()):
            if h.collector == me and h.state == RELEASING:
                h.state = LOADED if server in loaded_here else LOADING
                out.changed = True
                break
    # An orphan: the adapter is loaded on one of my servers but the record has no holder
    # for it (its owner died and the holder expired, or a record was lost). While the
    # record is short the claim step above adopts it (serving servers first); once the
    # record is full it is surplus, released (drained, then unloaded) like any other.
    # Only adapters this pool manages get here: with none wanted, ``candidates`` is empty.
    if len(active) >= replicas and out.claimed is None:
        for c in candidates:
            if c.serving and c.server not in holders:
                holders[c.server] = Holder(
                    collector=me, address=c.address, claimed=now, seen=now, state=RELEASING
                )
                out.released.append(c.server)
                out.changed = True
    return out
