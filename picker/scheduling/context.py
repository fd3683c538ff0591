"""What one decision carries to its plugins."""

from __future__ import annotations

import random

from .api import RequestInfo
from .inflight import InflightTracker
from .prefix import PrefixIndex
from .state import Thresholds

__all__ = ["Context"]


class Context:
    """The request, the clock, the rng and the shared indexes; lazily computed per-request facts."""

    __slots__ = ("_matches", "base_models", "inflight", "now", "prefix", "request", "rng", "thresholds")

    def __init__(
        self,
        request: RequestInfo,
        now: float,
        rng: random.Random,
        inflight: InflightTracker,
        prefix: PrefixIndex,
        thresholds: Thresholds,
        base_models: dict[str, int] | None = None,
    ) -> None:
        self.request = request
        self.now = now
        self.rng = rng
        self.inflight = inflight
        self.prefix = prefix
        self.thresholds = thresholds
        self.base_models = base_models if base_models is not None else {}
        self._matches: dict[str, int] | None = None

    def prefix_matches(self) -> dict[str, int]:
        """Endpoint -> leading request blocks it holds; computed once, shared by scorers."""
        if self._matches is None:
            hashes = self.request.prefix_hashes
            self._matches = self.prefix.match(hashes) if hashes else {}
        return self._matches
