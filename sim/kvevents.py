"""KV-cache events from a simulated pod, published the way vLLM publishes them.

``infergate-sim serve --kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
"endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558", "topic": "kv@sim-0@llama"}'``
is vLLM's ``--kv-events-config`` (same keys; pod ``i`` of a multi-pod simulator adds ``i``
to both ports, as vLLM does per data-parallel rank). Then:

* the pod's prompts are tokenized with the simulator's tokenizer (:func:`sim.tokenize.encode`,
  four characters per token) and its cache is keyed by vLLM's block hash chain over those
  ids (:class:`shared.kvhash.BlockHasher`, ``sha256_cbor``, seed ``hash_seed``: the
  ``PYTHONHASHSEED`` a real vLLM would run with, ``"0"`` by default);
* every engine step's cached and evicted blocks become one ``EventBatch`` of
  ``BlockStored`` / ``BlockRemoved`` events (:mod:`shared.kvevents`), sent on a ZMQ PUB
  socket as ``[topic, seq, payload]`` with ``seq`` counting from 0 per process;
* a ZMQ ROUTER socket on ``replay_endpoint`` answers a request ``[b"", start_seq (8 bytes
  big-endian)]`` with every buffered batch from ``start_seq`` on (``[b"", seq, payload]``
  each) and then ``[b"", END_SEQ, b""]``, as vLLM's ``ZmqEventPublisher`` does; the last
  ``buffer_steps`` batches are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from shared import kvevents as kv
from shared.kvhash import DEFAULT_SEED, BlockHasher
from sim.request import SimRequest

__all__ = ["EventRecorder", "KVEventsConfig", "ZmqPublisher", "offset_endpoint"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KVEventsConfig:
    """vLLM's ``KVEventsConfig`` fields the simulator honours, plus the hash seed."""

    enable_kv_cache_events: bool = True
    publisher: str = "zmq"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    topic: str = ""
    hash_seed: str = DEFAULT_SEED

    @classmethod
    def from_json(cls, text: str) -> KVEventsConfig:
        """Parse vLLM's JSON form; unknown keys (``max_queue_size``...) are accepted and ignored."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--kv-events-config is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("--kv-events-config must be a JSON object")
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        cfg = cls(**known)
        if cfg.publisher not in ("zmq", "null"):
            raise ValueError(f"unsupported KV events publisher {cfg.publisher!r} (zmq or null)")
        return cfg

    def for_pod(self, index: int) -> KVEventsConfig:
        from dataclasses import replace

        return replace(
            self,
            endpoint=offset_endpoint(self.endpoint, index),
            replay_endpoint=offset_endpoint(self.replay_endpoint, index) if self.replay_endpoint else None,
        )


def offset_endpoint(endpoint: str, index: int) -> str:
    """``tcp://host:P`` -> ``tcp://host:P+index`` (vLLM's per-rank offset); other schemes get a suffix."""
    if index == 0:
        return endpoint
    if endpoint.startswith("tcp://") and ":" in endpoint[6:]:
        base, _, port = endpoint.rpartition(":")
        return f"{base}:{int(port) + index}"
    return f"{endpoint}_dp{index}"


class EventRecorder:
    """The engine's KV sink: collects one step's events until :meth:`take`."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._events: list[kv.BlockStored | kv.BlockRemoved | kv.AllBlocksCleared] = []
        self._removed: list[int] = []

    def stored(self, req: SimRequest, start: int, end: int) -> None:
        self._flush_removed()
        bs = self.block_size
        hashes = req.block_hashes
        tokens = req.token_ids or []
        self._events.append(
            kv.BlockStored(
                list(hashes[start:end]),
                hashes[start - 1] if start > 0 else None,
                list(tokens[start * bs : end * bs]),
                bs,
                None,
                kv.GPU,
                req.lora,
            )
        )

    def removed(self, block_hash: int) -> None:
        self._removed.append(block_hash)

    def cleared(self) -> None:
        self._removed.clear()
        self._events.append(kv.AllBlocksCleared())

    def _flush_removed(self) -> None:
        if self._removed:
            self._events.append(kv.BlockRemoved(self._removed, kv.GPU))
            self._removed = []

    def take(self) -> list:
        self._flush_removed()
        out, self._events = self._events, []
        return out


class ZmqPublisher:
    """PUB + ROUTER sockets of one pod; :meth:`publish` never blocks (PUB drops at its HWM)."""

    def __init__(self, cfg: KVEventsConfig, block_size: int) -> None:
        self.cfg = cfg
        self.hasher = BlockHasher(block_size=block_size, seed=cfg.hash_seed)
        self.recorder = EventRecorder(block_size)
        self._ctx = zmq.asyncio.Context()
        self._pub: zmq.asyncio.Socket | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task | None = None
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=max(1, cfg.buffer_steps))
        self._seq = 0
        self._topic = cfg.topic.encode()
        self.endpoint = cfg.endpoint
        self.replay_endpoint = cfg.replay_endpoint
        self.published = 0

    def start(self) -> None:
        pub = self._ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, self.cfg.hwm)
        pub.setsockopt(zmq.LINGER, 0)
        self.endpoint = _bind_or_connect(pub, self.cfg.endpoint)
        self._pub = pub
        if self.cfg.replay_endpoint:
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.bind(self.cfg.replay_endpoint)
            self.replay_endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
            self._router = router
            self._task = asyncio.create_task(self._serve_replay(), name="sim-kv-replay")
        log.info("KV events publisher up", extra={"endpoint": self.endpoint, "replay": self.replay_endpoint})

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for s in (self._pub, self._router):
            if s is not None:
                s.close(linger=0)
        self._pub = self._router = None
        self._ctx.term()

    def flush(self) -> int | None:
        """Publish the events recorded since the last flush as one batch; its seq, or None."""
        events = self.recorder.take()
        if not events or self._pub is None:
            return None
        return self.publish(kv.EventBatch(time.time(), events, 0))

    def publish(self, batch: kv.EventBatch) -> int:
        seq = self._seq
        self._seq += 1
        payload = kv.encode_batch(batch)
        self._buffer.append((seq, payload))
        assert self._pub is not None
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart((self._topic, kv.seq_bytes(seq), payload), flags=zmq.NOBLOCK)
        self.published += 1
        return seq

    async def _serve_replay(self) -> None:
        router = self._router
        assert router is not None
        while True:
            frames = await router.recv_multipart()
            if len(frames) != 3:
                log.warning("invalid KV replay request", extra={"frames": len(frames)})
                continue
            ident, _, start = frames
            try:
                start_seq = int.from_bytes(start, "big")
            except Exception:
                continue
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    await router.send_multipart((ident, b"", kv.seq_bytes(seq), payload))
            await router.send_multipart((ident, b"", kv.END_SEQ, b""))


def _bind_or_connect(sock: Any, endpoint: str) -> str:
    """vLLM's rule: bind when the address is a wildcard (or ipc/inproc), connect otherwise."""
    if "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://")):
        sock.bind(endpoint)
        return sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    sock.connect(endpoint)
    return endpoint
