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

    __slots__ = (
        "_matches",
        "_pos",
        "_pos_of",
        "base_models",
        "inflight",
        "now",
        "prefix",
        "request",
        "rng",
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
    ) -> None:
        self.request = request
        self.now = now
        self.rng = rng
        self.inflight = inflight
        self.prefix = prefix
        self.thresholds = thresholds
        self.base_models = base_models if base_models is not None else {}
        self._matches: dict[str, int] | None = None
        self._pos: dict[str, int] | None = None
        self._pos_of: object = None

    def prefix_matches(self) -> dict[str, int]:
        """Endpoint -> leading request blocks it holds; computed once, shared by scorers."""
        if self._matches is None:
            hashes = self.request.prefix_hashes
            self._matches = self.prefix.match(hashes) if hashes else {}
        return self._matches

    def positions(self, group: object) -> dict[str, int]:
        """Address -> index in ``group`` (cached for the last group asked about).

        Lets sparse facts (the few endpoints holding a prefix) be written into a dense
        per-group list without a dictionary lookup per endpoint.
        """
        if self._pos_of is not group or self._pos is None:
            self._pos = {s.address: i for i, s in enumerate(group)}  # type: ignore[attr-defined]
            self._pos_of = group
        return self._pos

    def group_matches(self, group: object) -> list[tuple[int, int]]:
        """(index in ``group``, matched blocks) for the group's endpoints that hold a prefix."""
        matches = self.prefix_matches()
        if not matches:
            return []
        if len(matches) * 8 < len(group):  # type: ignore[arg-type]
            pos = self.positions(group)
            out = []
            for addr, m in matches.items():
                i = pos.get(addr)
                if i is not None:
                    out.append((i, m))
            return out
        get = matches.get
        return [(i, m) for i, s in enumerate(group) if (m := get(s.address, 0))]  # type: ignore[attr-defined]
