"""Each local pod's vLLM KV events, read once per node and republished compactly on NATS.

For every target with a KV events address (``kv_events`` in the targets file, or the pod
annotation ``infergate.io/kv-events``) one :class:`PodKVStream` task:

* subscribes to the pod's ZMQ PUB socket (``[topic, seq, payload]``, :mod:`shared.kvevents`);
* checks ``seq``: the next one applies; a jump is a gap, recovered by asking the pod's
  replay socket (``kv_replay``) for the missed batches; a gap it cannot fill (no replay
  socket, or the batches left the pod's buffer) resets the pod's state, since a missed
  ``BlockRemoved`` would otherwise stay in the index for ever; a smaller ``seq`` is a
  restarted engine (a fresh process counts from 0, its cache empty): reset as well;
* keeps the pod's block set per tier (:class:`PodKVState`, bounded by ``max_blocks``);
* publishes what changed every ``flush_interval`` as one :class:`~shared.kvevents.KVDelta`
  on ``<prefix>.<ns>.<pool>.kv.<pod>.<port>``, and the whole set every ``digest_interval``
  as a :class:`~shared.kvevents.KVDigest` on ``...kvd.<pod>.<port>``, kept as the last
  value in JetStream (:mod:`shared.kvstream`). A NATS outage drops the pending deltas and
  sends a digest as soon as the bus is back.

Pods without an address are not touched: the pickers keep routing them on the
approximate path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from collector.targets import Target
from shared import kvevents as kv
from shared.bus import Bus, BusError, raise_if_cancelling
from shared.kvstream import ensure_kv_stream

__all__ = [
    "ANNOTATION",
    "REPLAY_ANNOTATION",
    "KVEventsHub",
    "KVSettings",
    "KVStreamsCollector",
    "PodKVState",
    "PodKVStream",
    "kv_addresses",
    "kv_settings",
]

log = logging.getLogger(__name__)

ANNOTATION = "infergate.io/kv-events"  # a port ("5557") or an address ("tcp://*:5557")
REPLAY_ANNOTATION = "infergate.io/kv-replay"


def kv_addresses(annotations: Mapping[str, Any] | None, ip: str, rank: int = 0) -> tuple[str, str]:
    """(events, replay) ZMQ addresses of a pod from its annotations; "" where not annotated.

    A port (or ``tcp://*:P``) is taken on the pod's IP; target port number ``rank`` of a
    data-parallel pod adds ``rank`` to it, as vLLM offsets its sockets per rank.
    """
    out = []
    for key in (ANNOTATION, REPLAY_ANNOTATION):
        raw = str((annotations or {}).get(key) or "").strip()
        if not raw or not ip:
            out.append("")
            continue
        port_s = raw.rpartition(":")[2] if ":" in raw else raw
        try:
            port = int(port_s) + rank
        except ValueError:
            log.warning("bad KV events annotation", extra={"annotation": key, "value": raw})
            out.append("")
            continue
        host = f"[{ip}]" if ":" in ip else ip
        out.append(f"tcp://{host}:{port}")
    return out[0], out[1]


@dataclass
class KVSettings:
    flush_interval: float = 0.02  # seconds between deltas (at most; nothing changed: nothing sent)
    digest_interval: float = 1.0  # seconds between digests
    replay_timeout: float = 1.0
    max_blocks: int = 1 << 20  # per pod and tier: bounds memory whatever the pod sends


def kv_settings(config: Any) -> KVSettings:
    """The settings from the collector's flags (``--kv-flush-interval``, ``--kv-digest-interval``)."""
    return KVSettings(flush_interval=config.kv_flush_interval, digest_interval=config.kv_digest_interval)


@dataclass
class PodKVState:
    """One pod's cached blocks as its events tell, and what changed since the last delta.

    Synchronous and transport-free: :meth:`apply` takes a decoded batch.
    """

    max_blocks: int = 1 << 20
    gpu: set[int] = field(default_factory=set)
    cpu: set[int] = field(default_factory=set)
    block_size: int = 0
    # the pending delta
    stored: dict[int, None] = field(default_factory=dict)
    removed: dict[int, None] = field(default_factory=dict)
    stored_cpu: dict[int, None] = field(default_factory=dict)
    removed_cpu: dict[int, None] = field(default_factory=dict)
    clear: bool = False
    dropped: int = 0  # blocks refused because the set was full

    def reset(self) -> None:
        self.gpu.clear()
        self.cpu.clear()
        for d in (self.stored, self.removed, self.stored_cpu, self.removed_cpu):
            d.clear()
        self.clear = True

    def apply(self, batch: kv.EventBatch) -> None:
        for ev in batch.events:
            if isinstance(ev, kv.BlockStored):
                cpu = ev.medium == kv.CPU
                held, add, rem = (
                    (self.cpu, self.stored_cpu, self.removed_cpu)
                    if cpu
                    else (self.gpu, self.stored, self.removed)
                )
                if ev.block_size:
                    self.block_size = ev.block_size
                for h in ev.block_hashes:
                    if h in held:
                        continue
                    if len(held) >= self.max_blocks:
                        self.dropped += 1
                        continue
                    held.add(h)
                    rem.pop(h, None)
                    add[h] = None
            elif isinstance(ev, kv.BlockRemoved):
                cpu = ev.medium == kv.CPU
                held, add, rem = (
                    (self.cpu, self.stored_cpu, self.removed_cpu)
                    if cpu
                    else (self.gpu, self.stored, self.removed)
                )
                for h in ev.block_hashes:
                    if h in held:
                        held.discard(h)
                        if add.pop(h, 0) is None:
                            continue  # stored and removed within one delta: nothing to say
                        rem[h] = None
            else:  # AllBlocksCleared
                self.reset()

    def has_delta(self) -> bool:
        return bool(self.clear or self.stored or self.removed or self.stored_cpu or self.removed_cpu)

    def take_delta(self, address: str, epoch: str, seq: int) -> kv.KVDelta:
        d = kv.KVDelta(
            address,
            epoch,
            seq,
            time.time(),
            list(self.stored),
            list(self.removed),
            list(self.stored_cpu),
            list(self.removed_cpu),
            self.clear,
            self.block_size,
        )
        for x in (self.stored, self.removed, self.stored_cpu, self.removed_cpu):
            x.clear()
        self.clear = False
        return d

    def drop_delta(self) -> None:
        """The pending delta could not be sent: the next digest carries the state instead."""
        for x in (self.stored, self.removed, self.stored_cpu, self.removed_cpu):
            x.clear()
        self.clear = False


class PodKVStream:
    """The event stream of one pod: ZMQ in, deltas and digests out. ``run`` is the task."""

    def __init__(
        self,
        target: Target,
        bus_ref: Any,
        epoch: str,
        settings: KVSettings,
        ctx: zmq.asyncio.Context,
        metrics: Any = None,
        ensure_stream: Any = None,
    ) -> None:
        self.target = target
        self._bus_ref = bus_ref  # () -> Bus | None (the bus arrives once NATS connects)
        self.epoch = epoch
        self.settings = settings
        self.ctx = ctx
        self.metrics = metrics
        self._ensure_stream = ensure_stream  # async (bus) -> None: the digests' stream exists
        self.state = PodKVState(settings.max_blocks)
        self.expected: int | None = None  # the next seq
        self.delta_seq = 0
        self.gaps = self.recovered = self.resets = self.batches = self.bad = 0
        self.need_digest = True

    def _subjects(self, bus: Bus) -> tuple[str, str]:
        t = self.target
        return (
            bus.subjects.kv_delta(t.namespace, t.pool, t.pod, t.port),
            bus.subjects.kv_digest(t.namespace, t.pool, t.pod, t.port),
        )

    # -- ZMQ side ------------------------------------------------------------------------------
    async def run(self) -> None:
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.target.kv_events)
        log.info(
            "following KV events", extra={"endpoint": self.target.describe(), "zmq": self.target.kv_events}
        )
        pump = asyncio.create_task(self._publish_loop(), name=f"kv-publish {self.target.describe()}")
        try:
            while True:
                frames = await sub.recv_multipart()
                if len(frames) != 3:
                    self.bad += 1
                    continue
                try:
                    seq = kv.seq_of(frames[1])
                    batch = kv.decode_batch(frames[2])
                except kv.KVEventError as exc:
                    self.bad += 1
                    log.warning(
                        "bad KV event batch", extra={"endpoint": self.target.describe(), "error": str(exc)}
                    )
                    continue
                await self.on_batch(seq, batch)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            sub.close(0)

    async def on_batch(self, seq: int, batch: kv.EventBatch) -> None:
        exp = self.expected
        if exp is not None and seq > exp:
            self.gaps += 1
            missed = await self._replay(exp, seq)
            if missed is None:
                self.resets += 1
                log.warning(
                    "KV events gap not recoverable: state reset",
                    extra={"endpoint": self.target.describe(), "expected": exp, "got": seq},
                )
                self.state.reset()
            else:
                self.recovered += 1
                for b in missed:
                    self.state.apply(b)
        elif exp is not None and seq < exp:
            self.resets += 1  # a restarted engine counts from 0 again, with an empty cache
            log.info("KV events sequence restarted", extra={"endpoint": self.target.describe(), "seq": seq})
            self.state.reset()
        self.state.apply(batch)
        self.batches += 1
        self.expected = seq + 1

    async def _replay(self, start: int, end: int) -> list[kv.EventBatch] | None:
        """Batches ``[start, end)`` from the pod's replay socket, or None when it cannot give them all."""
        if not self.target.kv_replay:
            return None
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        got: dict[int, kv.EventBatch] = {}
        try:
            dealer.connect(self.target.kv_replay)
            await dealer.send_multipart([b"", kv.seq_bytes(start)])
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), self.settings.replay_timeout)
                if len(frames) != 3:
                    return None
                seq = kv.seq_of(frames[1])
                if seq == -1:
                    break
                if start <= seq < end:
                    got[seq] = kv.decode_batch(frames[2])
        except (TimeoutError, kv.KVEventError, zmq.ZMQError) as exc:
            log.warning("KV replay failed", extra={"endpoint": self.target.describe(), "error": repr(exc)})
            return None
        finally:
            dealer.close(0)
        if len(got) != end - start:
            return None  # the pod's buffer no longer holds them all
        return [got[s] for s in range(start, end)]

    # -- NATS side -----------------------------------------------------------------------------
    async def _publish_loop(self) -> None:
        s = self.settings
        next_digest = 0.0
        while True:
            await asyncio.sleep(s.flush_interval)
            bus: Bus | None = self._bus_ref()
            if bus is None or not bus.connected:
                self._drop_pending()
                self.need_digest = True
                continue
            delta_subj, digest_subj = self._subjects(bus)
            now = time.monotonic()
            try:
                if self.state.has_delta():
                    self.delta_seq += 1
                    d = self.state.take_delta(self.target.address, self.epoch, self.delta_seq)
                    await bus.publish(delta_subj, kv.encode_delta(d))
                # A digest numbered N holds exactly deltas 1..N: a picker that has them all
                # only refreshes the pod's liveness from it.
                if self.need_digest or now >= next_digest:
                    if self._ensure_stream is not None:
                        await self._ensure_stream(bus)
                    await bus.publish(digest_subj, kv.encode_digest(self.digest()))
                    self.need_digest = False
                    next_digest = now + s.digest_interval
            except BusError:
                self.need_digest = True
            raise_if_cancelling()

    def _drop_pending(self) -> None:
        """Changes that cannot be sent: skip a delta number, so receivers see the gap and
        take the next digest whole."""
        if self.state.has_delta():
            self.state.drop_delta()
            self.delta_seq += 1

    def digest(self, live: bool = True) -> kv.KVDigest:
        st = self.state
        return kv.KVDigest(
            self.target.address,
            self.epoch,
            self.delta_seq,
            time.time(),
            list(st.gpu),
            list(st.cpu),
            st.block_size,
            live,
        )


class KVEventsHub:
    """The collector's set of :class:`PodKVStream` tasks, reconciled with its targets."""

    def __init__(self, bus_ref: Any, epoch: str, settings: KVSettings | None = None) -> None:
        self.bus_ref = bus_ref
        self.epoch = epoch
        self.settings = settings or KVSettings()
        self.ctx: zmq.asyncio.Context | None = None
        self.streams: dict[tuple, PodKVStream] = {}
        self._stream_ok = False

    def stream_lost(self) -> None:
        """After a reconnect: the server may be a fresh one, without the digest stream."""
        self._stream_ok = False

    async def ensure_stream(self, bus: Bus) -> None:
        if self._stream_ok:
            return
        try:
            self._stream_ok = await ensure_kv_stream(bus)
        except Exception as exc:  # the digests still flow live; retried with the next one
            log.warning("KV digest stream not ensured", extra={"error": repr(exc)})

    def apply(self, targets: list[Target], supervisor: Any) -> None:
        """Follow the pods of ``targets`` that have a KV events address, and only those."""
        desired = {t.key: t for t in targets if t.kv_events}
        for key in [k for k, s in self.streams.items() if desired.get(k) != s.target]:
            stream = self.streams.pop(key)
            supervisor.cancel(_task_name(stream.target))
            self._farewell(stream)
        for key, t in desired.items():
            if key in self.streams:
                continue
            if self.ctx is None:
                self.ctx = zmq.asyncio.Context()
            stream = PodKVStream(
                t, self.bus_ref, self.epoch, self.settings, self.ctx, ensure_stream=self.ensure_stream
            )
            self.streams[key] = stream
            supervisor.spawn(_task_name(t), stream.run, max_backoff=5.0)

    def _farewell(self, stream: PodKVStream) -> None:
        """A pod we stop following: its digest says so, and the pickers route it approximately."""
        bus = self.bus_ref()
        if bus is None or not bus.connected:
            return
        _, subject = stream._subjects(bus)
        payload = kv.encode_digest(stream.digest(live=False))

        async def send() -> None:
            with contextlib.suppress(Exception):
                await bus.publish(subject, payload)

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(send())

    def close(self) -> None:
        self.streams.clear()
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
            self.ctx = None


def _task_name(t: Target) -> str:
    return f"kv-events {t.namespace}/{t.pool}/{t.pod}:{t.port}"


class KVStreamsCollector:
    """Prometheus: per followed pod, batches, gaps (recovered or not), resets and blocks held."""

    def __init__(self, hub: KVEventsHub) -> None:
        self.hub = hub

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["namespace", "pool", "pod"]
        fams = {
            "batches": CounterMetricFamily(
                "infergate_collector_kv_batches", "KV event batches applied", labels=labels
            ),
            "gaps": CounterMetricFamily("infergate_collector_kv_gaps", "Sequence gaps seen", labels=labels),
            "recovered": CounterMetricFamily(
                "infergate_collector_kv_gaps_recovered", "Gaps filled from the replay socket", labels=labels
            ),
            "resets": CounterMetricFamily(
                "infergate_collector_kv_resets",
                "State resets (unrecoverable gap, restarted engine)",
                labels=labels,
            ),
            "bad": CounterMetricFamily(
                "infergate_collector_kv_bad_batches", "Undecodable batches", labels=labels
            ),
        }
        blocks = GaugeMetricFamily(
            "infergate_collector_kv_blocks", "Blocks held per pod (GPU)", labels=labels
        )
        for s in list(self.hub.streams.values()):
            t = s.target
            lv = [t.namespace, t.pool, t.pod]
            for name, fam in fams.items():
                fam.add_metric(lv, getattr(s, name))
            blocks.add_metric(lv, len(s.state.gpu))
        yield from fams.values()
        yield blocks
