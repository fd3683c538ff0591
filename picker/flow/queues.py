"""Bands, flows and queued items: the data structures of flow control, no policy of time.

A :class:`Band` holds the requests of one priority, one :class:`Flow` per fairness id;
inside a flow requests are ordered FCFS (arrival) or EDF (deadline from
``x-slo-ttft-ms``; requests without one after every request with one, FCFS among
themselves). Which flow goes next is the band's fairness policy:

* ``round-robin``: the flows with work take turns, one request each;
* ``least-attained-service``: the flow that has received the least service (tokens, see
  :mod:`.fairness`) goes first;
* ``global-strict``: the oldest request of the band, whatever its flow.

Removal (dispatch, cancel, TTL) is O(log n): items leave their flow's heap lazily (a
dead mark) and the heap is rebuilt when the dead outnumber the living, so memory is
bounded by the band's limits. A band keeps its items in arrival order too, for TTL
expiry (every item has the same TTL, so the oldest expires first).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

__all__ = ["OVERFLOW_FLOW", "Band", "Flow", "Item"]

OVERFLOW_FLOW = "~overflow"  # fairness ids past the band's flow limit share this flow
_seq = itertools.count()


class Item:
    """One queued request."""

    __slots__ = (
        "band",
        "bytes",
        "deadline",
        "enqueued",
        "expires",
        "flow",
        "key",
        "live",
        "payload",
        "priority",
        "seq",
    )

    def __init__(
        self,
        payload: Any,
        priority: int,
        flow: str,
        size: int,
        enqueued: float,
        expires: float,
        deadline: float | None = None,
    ) -> None:
        self.payload = payload  # the caller's (request info, completion hook)
        self.priority = priority
        self.flow = flow
        self.bytes = size
        self.enqueued = enqueued
        self.expires = expires
        self.deadline = deadline  # EDF: enqueue + SLO TTFT (None: no SLO)
        self.seq = next(_seq)
        self.live = True
        self.key: tuple = ()
        self.band: Band | None = None


class Flow:
    """The queued requests of one fairness id in one band, in their ordering policy's order."""

    __slots__ = ("dead", "heap", "name", "size")

    def __init__(self, name: str) -> None:
        self.name = name
        self.heap: list[tuple[tuple, Item]] = []
        self.size = 0
        self.dead = 0

    def push(self, item: Item) -> None:
        heapq.heappush(self.heap, (item.key, item))
        self.size += 1

    def head(self) -> Item | None:
        h = self.heap
        while h and not h[0][1].live:
            heapq.heappop(h)
            self.dead -= 1
        return h[0][1] if h else None

    def pop(self) -> Item:
        item = self.head()
        assert item is not None
        heapq.heappop(self.heap)
        self.size -= 1
        return item

    def forget(self) -> None:
        """An item of this flow died in place (cancel, TTL)."""
        self.size -= 1
        self.dead += 1
        if self.dead > 32 and self.dead > self.size:
            self.heap = [e for e in self.heap if e[1].live]
            heapq.heapify(self.heap)
            self.dead = 0


def _fcfs_key(item: Item) -> tuple:
    return (item.enqueued, item.seq)


def _edf_key(item: Item) -> tuple:
    if item.deadline is None:
        return (1, item.enqueued, item.seq)
    return (0, item.deadline, item.seq)


class Band:
    """The queued requests of one priority, their bounds, and the fairness between their flows."""

    def __init__(
        self,
        priority: int,
        *,
        fairness: str = "round-robin",
        ordering: str = "fcfs",
        max_requests: int = 5000,
        max_bytes: int = 1 << 30,
        max_flows: int = 1000,
        service: Callable[[str], float] | None = None,
    ) -> None:
        self.priority = priority
        self.fairness = fairness
        self.key = _edf_key if ordering == "edf" else _fcfs_key
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.max_flows = max_flows
        self.service = service or (lambda flow: 0.0)  # least-attained-service: a flow's service
        self.flows: dict[str, Flow] = {}
        self.active: OrderedDict[str, Flow] = OrderedDict()  # flows with work, round-robin order
        self.arrivals: deque[Item] = deque()  # every item in arrival order (TTL expiry)
        self.size = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.size

    def fits(self, size: int) -> bool:
        return self.size < self.max_requests and self.bytes + size <= self.max_bytes

    def flow_name(self, fairness_id: str) -> str:
        if fairness_id in self.flows or len(self.flows) < self.max_flows:
            return fairness_id
        return OVERFLOW_FLOW

    def push(self, item: Item) -> None:
        name = self.flow_name(item.flow)
        item.flow = name
        flow = self.flows.get(name)
        if flow is None:
            flow = self.flows[name] = Flow(name)
        item.key = self.key(item)
        item.band = self
        flow.push(item)
        if name not in self.active:
            self.active[name] = flow
        self.arrivals.append(item)
        self.size += 1
        self.bytes += item.bytes

    # -- the next request: fairness between flows, ordering inside one ------------------
    def peek(self) -> Item | None:
        """The request fairness and ordering put first (not removed)."""
        if not self.size:
            return None
        if self.fairness == "round-robin":
            for flow in self.active.values():
                item = flow.head()
                if item is not None:
                    return item
            return None
        best: Item | None = None
        best_key: tuple = ()
        strict = self.fairness == "global-strict"
        service = self.service
        for name, flow in self.active.items():
            item = flow.head()
            if item is None:
                continue
            k = (item.enqueued, item.seq) if strict else (service(name), item.enqueued, item.seq)
            if best is None or k < best_key:
                best, best_key = item, k
        return best

    def take(self, item: Item) -> None:
        """Remove ``item`` (just peeked) for dispatch; its flow goes to the back of the turn."""
        flow = self.flows[item.flow]
        got = flow.pop()
        assert got is item
        item.live = False
        self._left(item, flow)
        if flow.size:
            self.active.move_to_end(item.flow)

    def drop(self, item: Item) -> None:
        """Remove ``item`` from wherever it is (cancel, TTL)."""
        if not item.live:
            return
        item.live = False
        flow = self.flows[item.flow]
        flow.forget()
        self._left(item, flow)

    def _left(self, item: Item, flow: Flow) -> None:
        self.size -= 1
        self.bytes -= item.bytes
        if not flow.size:  # its dead entries go with it: a new item starts a new Flow
            self.active.pop(flow.name, None)
            if self.flows.get(flow.name) is flow:
                del self.flows[flow.name]
        arr = self.arrivals
        while arr and not arr[0].live:
            arr.popleft()
        if len(arr) > 64 and len(arr) > 2 * self.size:
            self.arrivals = deque(i for i in arr if i.live)

    def expired(self, now: float) -> list[Item]:
        """Remove and return the items whose TTL passed."""
        out: list[Item] = []
        arr = self.arrivals
        while arr and (not arr[0].live or arr[0].expires <= now):
            item = arr.popleft()
            if item.live:
                out.append(item)
                item.live = False
                flow = self.flows[item.flow]
                flow.forget()
                self._left(item, flow)
        return out

    def oldest(self) -> Item | None:
        for item in self.arrivals:
            if item.live:
                return item
        return None
