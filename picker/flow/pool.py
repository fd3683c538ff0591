"""Flow control as a property of the pool: per-replica shares of every pod's limit, shared fairness.

Upstream runs flow control per replica, so N active replicas admit N times the limit.
Here every replica publishes, every ``publish_interval`` (100 ms), one small message on
``<prefix>.<ns>.<pool>.fc.<replica>``: its *demand* (requests queued plus its own requests
in flight; its queued count zero while a peer waits with a higher priority, see
``FlowController.queued_demand``) and the service it gave each flow since the last
message (least-attained-service tokens, at most 64 flows). From the demands every replica
computes the same split of each pod's concurrency limit (largest remainder, proportional
to demand, ties rotated by pod so small limits spread over the replicas), and dispatches
to a pod only while its own requests there stay under its share **and** the pod's total in flight (every
replica's, from the shared in-flight view) stays under the limit.

Shares grow late and shrink at once: a replica applies a smaller share as soon as it
computes it, a larger one only after two publication intervals, by which time the
replica giving the capacity up has heard the same demands and shrunk. So the shares
sum to at most the limit even while demands move (up to one message lost in between).

* **Band order**: the message carries the replica's highest waiting priority; a replica holds
  its lower bands back while a peer waits with a higher one (:meth:`Shares.peer_top`), and
  claims no share of the pods for its held queue. A rise of that priority (a request queues
  above everything waiting here) is published at once (:meth:`PoolCoordinator.top_rose`, at
  most one extra message per 10 ms); a fall waits for the tick: holding a lower band a
  little too long costs less than letting one overtake.
* **Band bounds**: ``max_requests_per_band`` / ``max_bytes_per_band`` hold for the pool:
  each replica keeps at most the bound divided by the replicas alive (:meth:`Shares.replicas`),
  so four replicas do not queue four times the bound.
* **Autoscaling**: the message also carries the replica's queue length per target model;
  the autoscaler sums the replicas' latest values into ``infergate-flow-control-queue-length``
  (an external metric), which exists even while no pod serves the model (scale from zero).
* **Bus cost**: one message per replica per interval, independent of the request rate
  (plus one per rise of the top waiting priority: up to the top band's queued arrivals,
  at most 100/s per replica):
  10 msg/s per replica, ~60 bytes plus ~20 bytes per active flow; at 1,000 req/s on
  four replicas, 40 msg/s and a few kB/s, against the ~2 events per request (assignment
  and completion, batched) that the shared view already carries.
* **NATS down** (the bus reports disconnected, or no peer heard for ``peer_timeout``
  while peers were known): each replica takes ``limit / n`` of every pod, n the number
  of replicas it last knew (never the whole limit), split the same way.
* **A killed replica**: its queued requests were in its memory, so their streams fail
  with it (Envoy answers per the ext_proc failure mode); nothing else does. Its peers
  stop hearing it, drop it after ``peer_timeout`` and take its share (growing late).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

import msgspec

from shared.flowmsg import FlowMessage, decode_flow, encode_flow

__all__ = ["FlowMessage", "PoolCoordinator", "Shares", "split"]

log = logging.getLogger(__name__)

MAX_FLOWS_PER_MESSAGE = 64


def split(limit: int, weights: list[tuple[str, float]], rotate: int = 0) -> dict[str, int]:
    """Integer shares of ``limit`` proportional to ``weights`` (largest remainder), summing to it.

    Replicas with no weight share equally when every weight is 0. Ties in the remainder
    go round the replicas with ``rotate`` (the pod), so a limit smaller than the number
    of replicas still reaches every replica over the pods.
    """
    n = len(weights)
    if n == 0 or limit <= 0:
        return {}
    total = sum(w for _, w in weights)
    if total <= 0:
        weights = [(name, 1.0) for name, _ in weights]
        total = float(n)
    exact = [(name, limit * w / total) for name, w in weights]
    out = {name: int(x) for name, x in exact}
    left = limit - sum(out.values())
    order = sorted(range(n), key=lambda i: (-(exact[i][1] - int(exact[i][1])), (i - rotate) % n))
    for i in order[:left]:
        out[exact[i][0]] += 1
    return out


class Shares:
    """This replica's share of every pod's limit, from the demands the replicas publish."""

    def __init__(
        self,
        replica: str,
        interval: float = 0.1,
        peer_timeout: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replica = replica
        self.interval = interval
        self.peer_timeout = peer_timeout if peer_timeout is not None else max(1.0, 5 * interval)
        self.grow_delay = 2 * interval
        self.clock = clock
        self.demand = 0  # this replica's, set by the coordinator before it publishes
        self.peers: dict[str, tuple[int, float]] = {}  # replica -> (demand, heard at)
        self.tops: dict[str, tuple[int, float]] = {}  # replica -> (highest waiting priority, heard at)
        self.connected = False  # the coordinator's bus is up
        self.known = 1  # replicas last known while connected (the fallback's divisor)
        self.known_names: list[str] = [replica]
        self._granted: dict[str, tuple[int, float | None]] = {}  # address -> (share, grow pending since)

    # -- fed by the coordinator --------------------------------------------------------
    def heard(self, replica: str, demand: int, now: float, top: int | None = None) -> None:
        if replica != self.replica:
            self.peers[replica] = (max(0, demand), now)
            if top is None:
                self.tops.pop(replica, None)
            else:
                self.tops[replica] = (top, now)

    def peer_top(self) -> int | None:
        """The highest priority a live peer has waiting (None: none, or the bus is down).

        The controller holds its lower bands back while a peer waits with a higher one, so
        a slot that frees goes to the pool's top band, not to whichever replica sees it first.
        """
        if not self.connected:
            return None
        now = self.clock()
        out = None
        for r, (top, at) in list(self.tops.items()):
            if now - at > self.peer_timeout:
                del self.tops[r]
            elif out is None or top > out:
                out = top
        return out

    def live(self, now: float) -> list[tuple[str, float]]:
        """(replica, demand) of every replica believed alive, this one included, by name."""
        gone = [r for r, (_, at) in self.peers.items() if now - at > self.peer_timeout]
        for r in gone:
            del self.peers[r]
        out = [(r, float(d)) for r, (d, _) in self.peers.items()]
        out.append((self.replica, float(self.demand)))
        out.sort()
        if self.connected:
            self.known = len(out)
            self.known_names = [r for r, _ in out]
        return out

    def replicas(self) -> int:
        """Replicas believed alive, this one included; NATS down: the number last known."""
        if not self.connected:
            return max(1, self.known)
        return len(self.live(self.clock()))

    @property
    def degraded(self) -> bool:
        return not self.connected and self.known > 1

    # -- read by the concurrency gate ---------------------------------------------------
    def requests(self, address: str, limit: int) -> int:
        now = self.clock()
        rotate = zlib.crc32(address.encode())
        if self.degraded:  # NATS down: limit / last known replicas, never the whole limit
            names = sorted({*self.known_names, self.replica})
            return split(limit, [(r, 1.0) for r in names], rotate).get(self.replica, 0)
        live = self.live(now)
        if len(live) == 1:
            return limit
        target = split(limit, live, rotate).get(self.replica, 0)
        cur, since = self._granted.get(address, (target, None))
        if target <= cur:
            cur, since = target, None
        elif since is None:
            since = now
        elif now - since >= self.grow_delay:
            cur, since = target, None
        if len(self._granted) < 100_000:
            self._granted[address] = (cur, since)
        return cur

    def tokens(self, address: str) -> float:
        """This replica's fraction of a pod's token limit (demand-proportional)."""
        if self.degraded:
            return 1.0 / self.known
        live = self.live(self.clock())
        total = sum(d for _, d in live)
        if len(live) == 1:
            return 1.0
        mine = float(self.demand)
        return mine / total if total > 0 else 1.0 / len(live)


class PoolCoordinator:
    """Publishes this replica's demand and flow service; follows the peers' (one supervised task)."""

    def __init__(
        self,
        bus: Any,
        subjects: Any,
        namespace: str,
        pool: str,
        replica: str,
        shares: Shares,
        controller: Any,
        runner: Any,
    ) -> None:
        self.bus = bus
        self.subject = subjects.flow(namespace, pool, replica)
        self.pattern = subjects.flow_of_pool(namespace, pool)
        self.replica = replica
        self.shares = shares
        self.controller = controller
        self.runner = runner
        self.sent = 0
        self.received = 0
        self.min_gap = min(0.01, shares.interval / 10)  # early publications (a rise) at most this often
        self._early: asyncio.Event | None = None
        self._last_sent = -1e9

    def top_rose(self) -> None:
        """The controller's highest waiting priority went up: publish now, not on the tick."""
        if self._early is not None:
            self._early.set()

    def on_message(self, subject: str, data: bytes) -> None:
        try:
            msg = decode_flow(data)
        except (msgspec.DecodeError, ValueError):
            return
        if msg.replica == self.replica:
            return
        self.received += 1
        now = time.time()
        self.shares.heard(msg.replica, msg.demand, now, msg.top)
        svc = self.controller.service
        for flow, tokens in list(msg.service.items())[:MAX_FLOWS_PER_MESSAGE]:
            if isinstance(flow, str) and len(flow) <= 256 and tokens > 0:
                svc.add(flow, float(tokens), now, local=False)

    def demand(self) -> int:
        return self.controller.queued_demand() + sum(n for n, _ in self.runner.own.values())

    async def publish_once(self) -> None:
        self.shares.connected = bool(self.bus.connected)
        self.shares.demand = self.demand()
        pending = self.controller.service.take_pending()
        if len(pending) > MAX_FLOWS_PER_MESSAGE:
            top = sorted(pending.items(), key=lambda kv: -kv[1])[:MAX_FLOWS_PER_MESSAGE]
            pending = dict(top)
        queued = dict(self.controller.by_model)
        msg = FlowMessage(
            self.replica, time.time(), self.shares.demand, pending, queued, self.controller.top()
        )
        if not self.shares.connected:
            return
        try:
            await self.bus.publish(self.subject, encode_flow(msg))
            self.sent += 1
            self._last_sent = time.monotonic()
        except Exception as exc:  # a bus hiccup: the next interval tries again
            self.shares.connected = False
            log.debug("flow-control publish failed", extra={"error": str(exc)})

    async def run(self) -> None:
        sub = await self.bus.subscribe(self.pattern, self.on_message)
        self._early = early = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self.publish_once()
                self.runner.kick()  # shares may have grown: queued requests may go
                tick_at = loop.time() + self.shares.interval
                while (left := tick_at - loop.time()) > 0:
                    try:
                        await asyncio.wait_for(early.wait(), left)
                    except TimeoutError:
                        break
                    early.clear()
                    await asyncio.sleep(max(0.0, self._last_sent + self.min_gap - time.monotonic()))
                    await self.publish_once()  # a rise: tell the peers now; the tick stays
        finally:
            self._early = None
            try:
                await sub.unsubscribe()
            except Exception:
                pass
