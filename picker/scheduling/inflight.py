"""In-flight accounting: load sent to an endpoint that its metrics do not show yet.

Metrics arrive every few tens of milliseconds; at hundreds of requests per second a
burst between two scrapes would all land on whichever pod looked best at the last
scrape. The tracker counts, per endpoint, the requests assigned to it (by this replica
or, through the shared view, by its peers) that the endpoint's latest snapshot cannot
include yet, so scorers can add them to the pod's own ``waiting`` and KV figures.

The accounting rules, chosen so that nothing is counted twice:

* an assignment made at ``at`` is *extra* load until a snapshot of that endpoint with
  ``ts - propagation >= at`` arrives: from then on the pod's own counts include it;
* an assignment that arrives (late, from a peer) when a newer snapshot already covers
  it is recorded as reflected straight away;
* a completion releases the entry: if it was still extra, the extra load drops;
* every entry expires after ``ttl`` seconds, so a lost completion (a replica that
  died) cannot leak load forever.

Entries are keyed by ``(replica, request_id)``: two replicas that route requests with
the same client request id at once hold two requests, and a completion releases only
the one of the replica that reports it (``replica`` is "" for a caller that has no
peers).

Every update is O(1) or amortized O(1): entries sit in two time-ordered deques (per
endpoint for reconciliation, global for expiry) and leave each deque once.

Bounded: request ids come from clients (and peers), so at most ``max_entries`` requests
are tracked (a new one evicts the oldest, counted in :attr:`InflightTracker.evicted`), and
at most ``max_addresses`` endpoints (an assignment to one more is not counted, in
:attr:`InflightTracker.refused`); endpoints leave with :meth:`remove_endpoint`.
"""

from __future__ import annotations

from collections import deque

__all__ = ["InflightTracker", "Load"]


class Load:
    """Extra load on one endpoint, shared by reference with the scheduler's endpoint state."""

    __slots__ = ("n", "tokens")

    def __init__(self) -> None:
        self.n = 0  # requests not yet reflected in the endpoint's snapshot
        self.tokens = 0  # their uncached prompt tokens + expected output tokens

    def __repr__(self) -> str:
        return f"Load(n={self.n}, tokens={self.tokens})"


Key = tuple[str, str]  # (replica, request_id)


class _Entry:
    __slots__ = ("address", "at", "extra", "key", "live", "tokens")

    def __init__(self, key: Key, address: str, at: float, tokens: int) -> None:
        self.key = key
        self.address = address
        self.at = at
        self.tokens = tokens
        self.extra = False
        self.live = True


class InflightTracker:
    """Per-endpoint extra load, reconciled with snapshots, released by completions, expired by TTL."""

    def __init__(
        self,
        ttl: float = 60.0,
        propagation: float = 0.02,
        avg_tokens: float = 500.0,
        *,
        max_entries: int = 100_000,
        max_addresses: int = 10_000,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max(1, max_entries)
        self.max_addresses = max(1, max_addresses)
        self.evicted = 0  # live entries dropped to stay under max_entries
        self.refused = 0  # assignments to endpoints past max_addresses
        self.propagation = propagation
        # A running mean of tokens per request, used to price a pod's *reported* waiting
        # requests, whose sizes the metrics do not give.
        self.avg_tokens = avg_tokens
        self._entries: dict[Key, _Entry] = {}
        self._loads: dict[str, Load] = {}
        self._pending: dict[str, deque[_Entry]] = {}  # extra entries per endpoint, by time
        self._snap_ts: dict[str, float] = {}  # newest snapshot time seen per endpoint
        self._expiry: deque[_Entry] = deque()
        # Every open request per endpoint, reflected in its metrics or not (flow control's
        # concurrency detector reads it; peers' assignments count too).
        self._live: dict[str, Load] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def addresses(self) -> int:
        """Endpoints with any per-endpoint state (load, pending deque or snapshot time)."""
        return len(self._loads.keys() | self._pending.keys() | self._snap_ts.keys())

    def load(self, address: str) -> Load:
        """The live :class:`Load` object of ``address`` (created on first use)."""
        load = self._loads.get(address)
        if load is None:
            load = self._loads[address] = Load()
        return load

    def live(self, address: str) -> Load:
        """Open requests (and their tokens) on ``address``, from every replica."""
        load = self._live.get(address)
        if load is None:
            load = self._live[address] = Load()
        return load

    def assign(self, request_id: str, address: str, tokens: int, now: float, replica: str = "") -> None:
        """Record that ``replica``'s ``request_id`` was sent to ``address`` at ``now``."""
        self.expire(now)
        key = (replica, request_id)
        if key in self._entries:  # a retry re-assigned it: the old entry is over
            self.complete(request_id, now, replica)
        if address not in self._loads and len(self._loads) >= self.max_addresses:
            self.refused += 1
            return
        while len(self._entries) >= self.max_entries:
            self._evict_oldest()
        if len(self._expiry) > 2 * self.max_entries:  # completed entries wait for their TTL here
            self._expiry = deque(e for e in self._expiry if e.live)
        tokens = max(0, int(tokens))
        self.avg_tokens += (tokens - self.avg_tokens) * 0.01
        entry = _Entry(key, address, now, tokens)
        self._entries[key] = entry
        self._expiry.append(entry)
        live = self.live(address)
        live.n += 1
        live.tokens += tokens
        if now <= self._snap_ts.get(address, float("-inf")) - self.propagation:
            return  # a newer snapshot already counts it
        entry.extra = True
        load = self.load(address)
        load.n += 1
        load.tokens += tokens
        dq = self._pending.get(address)
        if dq is None:
            dq = self._pending[address] = deque()
        if dq and dq[-1].at > now:  # a peer's late event: keep the deque time-ordered (rare)
            i = len(dq)
            while i > 0 and dq[i - 1].at > now:
                i -= 1
            dq.insert(i, entry)
        else:
            dq.append(entry)

    def complete(self, request_id: str, now: float, replica: str = "") -> None:
        """Release ``replica``'s ``request_id``; unknown ids (another pool's, already expired) are ignored."""
        entry = self._entries.pop((replica, request_id), None)
        if entry is not None:
            self._release(entry)
        self.expire(now)

    def snapshot(self, address: str, ts: float) -> None:
        """A snapshot scraped at ``ts`` arrived: assignments older than it are now in its counts."""
        if ts <= self._snap_ts.get(address, float("-inf")):
            return
        self._snap_ts[address] = ts
        dq = self._pending.get(address)
        if not dq:
            return
        cutoff = ts - self.propagation
        while dq and dq[0].at <= cutoff:
            entry = dq.popleft()
            if entry.extra:
                entry.extra = False
                load = self._loads[address]
                load.n -= 1
                load.tokens -= entry.tokens

    def expire(self, now: float) -> None:
        """Drop entries older than the TTL (their completion was lost)."""
        q = self._expiry
        limit = now - self.ttl
        while q and q[0].at <= limit:
            entry = q.popleft()
            if entry.live:
                if self._entries.get(entry.key) is entry:
                    del self._entries[entry.key]
                self._release(entry)

    def _evict_oldest(self) -> None:
        q = self._expiry
        while q:
            entry = q.popleft()
            if entry.live:
                if self._entries.get(entry.key) is entry:
                    del self._entries[entry.key]
                self._release(entry)
                self.evicted += 1
                return

    def remove_endpoint(self, address: str) -> None:
        """The endpoint left the pool: its extra load goes with it."""
        for entry in self._pending.pop(address, ()):
            entry.extra = False
        load = self._loads.pop(address, None)
        if load is not None:
            load.n = 0
            load.tokens = 0
        self._snap_ts.pop(address, None)

    def extra(self, address: str) -> tuple[int, int]:
        """(requests, tokens) sent to ``address`` and not yet in its metrics."""
        load = self._loads.get(address)
        return (load.n, load.tokens) if load is not None else (0, 0)

    def _release(self, entry: _Entry) -> None:
        entry.live = False
        live = self._live.get(entry.address)
        if live is not None:
            live.n -= 1
            live.tokens -= entry.tokens
        if entry.extra:
            entry.extra = False
            load = self._loads.get(entry.address)
            if load is not None:
                load.n -= 1
                load.tokens -= entry.tokens
            # The entry stays in its pending deque, marked dead; the next snapshot pops it.
