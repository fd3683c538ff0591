"""What one decision carries to its plugins."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .api import RequestInfo
from .inflight import InflightTracker
from .prefix import PrefixIndex
from .state import EndpointState, Thresholds

__all__ = ["Context"]


class Context:
    """The request, the clock, the rng and the shared indexes; lazily computed per-request facts."""

    __slots__ = (
        "_hits",
        "_hits_of",
        "_matches",
        "_work",
        "_work_of",
        "base_models",
        "inflight",
        "now",
        "peer_count",
        "peer_index",
        "peer_unseen",
        "prefix",
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
        # MaxScorePicker.peer_margin); one replica alone is 0 of 1.
        self.peer_index = peer_index
        self.peer_count = peer_count
        self.peer_unseen = peer_unseen  # peers' assignments not heard of yet, typically
        self.score_unit = 1.0  # score points per unit of the totals a picker sees (set by the selector)
        self._matches: dict[str, int] | None = None
        self._work: list[float] | None = None
        self._work_of: object = None
        self._hits: list[tuple[int, int]] | None = None
        self._hits_of: object = None

    def prefix_matches(self) -> dict[str, int]:
        """Endpoint -> leading request blocks it holds; computed once, shared by scorers."""
        if self._matches is None:
            hashes = self.request.prefix_hashes
            self._matches = self.prefix.match(hashes) if hashes else {}
        return self._matches

    def remember_work(self, group: object, scores: list[float] | None) -> None:
        """The expected-work scores of ``group`` (None: all equal), for load-gated scorers."""
        self._work = scores
        self._work_of = group

    def work_scores(self, group: object) -> tuple[bool, list[float] | None]:
        """(known, scores) for ``group``, as remembered by the expected-work scorer."""
        return (self._work_of is group, self._work)

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
