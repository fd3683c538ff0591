"""What one decision carries to its plugins, including the data they pass each other."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .api import RequestInfo
from .inflight import InflightTracker
from .prefix import PrefixIndex
from .state import EndpointState, Thresholds

__all__ = ["Context"]


class Context:
    """The request, the clock, the rng and the shared indexes; lazily computed per-request facts."""

    __slots__ = (
        "_data",
        "_hits",
        "_hits_of",
        "_matches",
        "base_models",
        "inflight",
        "now",
        "peer_count",
        "peer_index",
        "peer_unseen",
        "prefix",
        "rejection",
        "request",
        "rng",
        "score_unit",
        "thresholds",
    )

    def __init__(
        self,
        request: RequestInfo,
        now: float,
        rng: random.Random,
        inflight: InflightTracker,
        prefix: PrefixIndex,
        thresholds: Thresholds,
        base_models: dict[str, int] | None = None,
        peer_index: int = 0,
        peer_count: int = 1,
        peer_unseen: float = 1.0,
    ) -> None:
        self.request = request
        self.now = now
        self.rng = rng
        self.inflight = inflight
        self.prefix = prefix
        self.thresholds = thresholds
        self.base_models = base_models if base_models is not None else {}
        # This replica's place among the picker replicas sharing one view (see
        # MaxScoreChooser.peer_margin); one replica alone is 0 of 1.
        self.peer_index = peer_index
        self.peer_count = peer_count
        self.peer_unseen = peer_unseen  # peers' assignments not heard of yet, typically
        # (status, reason): a selector that finds no endpoint acceptable for this request (an
        # SLO no endpoint can meet, for a sheddable request) sets it; the scheduler answers it.
        self.rejection: tuple[int, str] | None = None
        self.score_unit = 1.0  # score points per unit of the totals a picker sees (set by the selector)
        self._matches: dict[str, int] | None = None
        self._data: dict[str, tuple[object, Any]] | None = None
        self._hits: list[tuple[int, int]] | None = None
        self._hits_of: object = None

    def prefix_matches(self) -> dict[str, int]:
        """Endpoint -> leading request blocks it holds; computed once, shared by scorers."""
        if self._matches is None:
            hashes = self.request.prefix_hashes
            self._matches = self.prefix.match(hashes) if hashes else {}
        return self._matches

    def put(self, key: str, group: object, value: Any) -> None:
        """Publish ``value`` under ``key`` for ``group``: a producer plugin's output.

        Keyed by the group object too: a decision ranks several groups (fresh, the
        filters' rest, stale), and a consumer must read what was computed for its own.
        The key must be in the producer's ``produces`` (the loader orders by it).
        """
        data = self._data
        if data is None:
            self._data = data = {}
        data[key] = (group, value)

    def get(self, key: str, group: object) -> tuple[bool, Any]:
        """``(known, value)``: what the producer of ``key`` published for ``group``.

        ``known`` is False when the producer did not run on this group (it failed):
        consumers degrade gracefully instead of raising.
        """
        data = self._data
        if data is not None:
            entry = data.get(key)
            if entry is not None and entry[0] is group:
                return True, entry[1]
        return False, None

    def prefix_hits(self, group: Sequence[EndpointState]) -> list[tuple[int, int]]:
        """(index in ``group``, leading request blocks held) for the endpoints with a hit.

        Sparse, because a prefix is usually held by a few pods: scorers start from a
        dense no-hit list and correct only these entries. Cached for the last group asked
        about, so the scorers of one decision share one pass.
        """
        if self._hits_of is group and self._hits is not None:
            return self._hits
        matches = self.prefix_matches()
        if matches:
            get = matches.get
            hits = [(i, m) for i, s in enumerate(group) if (m := get(s.address, 0))]
        else:
            hits = []
        self._hits = hits
        self._hits_of = group
        return hits
