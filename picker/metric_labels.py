"""Bounded metric label values: what a client sends can never grow ``/metrics`` by itself.

Every request-level family carries labels that come from client input (the ``model`` of
the body, the rewrite header, the fairness-id header). Prometheus client libraries never
forget a label set, and one set of our request families costs ~400 lines (histograms
under three naming schemes), so 1,000 junk model names made a 62 MB page. A value is
therefore a label only when the system vouches for it:

* **known** names, from the configuration (InferenceModels, rewrite rules' exact matches);
* **vouched** names, checked on first sight (the picker vouches for the models its pool's
  pods report serving, base models and LoRA adapters), admitted once and kept (sticky, so a
  gauge incremented under a name is decremented under the same name);
* at most ``admit`` other values, first come (0 by default for model names: a name nobody
  serves or configured is ``other``; upstream's passthrough cap, for fairness ids);

and only while the label has fewer than ``limit`` values (1,000, upstream's cap) and the
value has at most ``max_len`` characters. Everything else reads :data:`OTHER`. Known
names never fold and never count against ``admit``, so a flood of junk cannot push a
configured model into ``other``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["LABEL_LIMIT", "LABEL_MAX_LEN", "OTHER", "LabelCap", "LabelCapCollector", "served_models"]

OTHER = "other"
LABEL_LIMIT = 1000  # values per label, all sources together (llm-d-router's cap)
LABEL_MAX_LEN = 128


class LabelCap:
    """Bounds the values of one label (see the module docstring)."""

    __slots__ = ("admit", "admitted", "folded", "known", "limit", "max_len", "seen", "vouch")

    def __init__(
        self,
        limit: int = LABEL_LIMIT,
        max_len: int = LABEL_MAX_LEN,
        *,
        admit: int | None = None,
        vouch: Callable[[str], bool] | None = None,
    ) -> None:
        self.limit = max(0, min(int(limit), LABEL_LIMIT))
        self.max_len = max_len
        # Unvouched values admitted first come; default: as many as the limit allows.
        self.admit = self.limit if admit is None else max(0, min(int(admit), self.limit))
        self.vouch = vouch
        self.known: frozenset[str] = frozenset()
        self.seen: set[str] = set()  # admitted values (vouched or first come), never forgotten
        self.admitted = 0  # of which first come
        self.folded = 0  # lookups that read OTHER

    def set_known(self, names: Iterable[str]) -> None:
        """The configured names (at most ``limit``, shortest-first is not promised: sorted)."""
        ok = sorted({n for n in names if n and len(n) <= self.max_len and n != OTHER})
        self.known = frozenset(ok[: self.limit])

    @property
    def values(self) -> int:
        """Distinct values this label can currently take, ``other`` included."""
        return len(self.known | self.seen) + 1

    def __call__(self, value: str) -> str:
        if value in self.seen or value in self.known or not value:
            return value
        if len(value) > self.max_len or len(self.seen) + len(self.known) >= self.limit:
            self.folded += 1
            return OTHER
        if self.vouch is not None and self.vouch(value):
            self.seen.add(value)
            return value
        if self.admitted < self.admit:
            self.admitted += 1
            self.seen.add(value)
            return value
        self.folded += 1
        return OTHER


def served_models(endpoints: Callable[[], list[Any]], refresh_s: float = 1.0) -> Callable[[str], bool]:
    """A vouch function: is ``name`` a model (base or adapter) some pod of the pool reports?

    The set is rebuilt from the view at most every ``refresh_s`` seconds, and only when a
    name is not already a label, so a flood of junk names costs one set lookup each.
    """
    cache: dict[str, Any] = {"at": float("-inf"), "names": frozenset()}

    def vouch(name: str) -> bool:
        now = time.monotonic()
        if now - cache["at"] >= refresh_s:
            names: set[str] = set()
            for ep in endpoints():
                snap = ep.snapshot
                if snap.model:
                    names.add(snap.model)
                names.update(snap.lora.running)
                names.update(snap.lora.waiting)
            cache["names"], cache["at"] = frozenset(names), now
        return name in cache["names"]

    return vouch


class LabelCapCollector(Collector):
    """Each cap's current number of values (a gauge) and its fold count (a counter)."""

    def __init__(self, prefix: str, caps: dict[str, LabelCap]) -> None:
        self.prefix = prefix
        self.caps = caps

    def collect(self):
        g = GaugeMetricFamily(
            f"{self.prefix}_metric_label_values",
            "Distinct values a bounded metric label can take now (configured, vouched, admitted, other)",
            labels=["label"],
        )
        c = CounterMetricFamily(
            f"{self.prefix}_metric_label_overflow",
            "Label values that were not admitted and read 'other' instead",
            labels=["label"],
        )
        for label, cap in self.caps.items():
            g.add_metric([label], cap.values)
            c.add_metric([label], cap.folded)
        yield g
        yield c
