"""The sizes of a service's bounded tables, as one gauge family read at scrape time.

Every table keyed by input from outside the process (client request ids and model names,
peers' events, pods' reports) has a bound; exporting each table's current size next to its
bound lets an operator see a flood pressing against it before anything is evicted. The
sizes are read at scrape time, so the request path pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["TableCollector"]


class TableCollector(Collector):
    """``<prefix>_table_entries{table}``, ``_table_limit{table}`` and ``_table_evicted_total{table}``.

    ``tables`` maps a name to (current size, bound, entries evicted or refused so far).
    """

    def __init__(
        self, prefix: str, tables: dict[str, tuple[Callable[[], int], int, Callable[[], int]]]
    ) -> None:
        self.prefix = prefix
        self.tables = tables

    def collect(self):
        size = GaugeMetricFamily(
            f"{self.prefix}_table_entries", "Entries in a bounded in-memory table", labels=["table"]
        )
        limit = GaugeMetricFamily(
            f"{self.prefix}_table_limit", "The bound of that table (entries)", labels=["table"]
        )
        evicted = CounterMetricFamily(
            f"{self.prefix}_table_evicted",
            "Entries evicted (or refused) because the table was at its bound",
            labels=["table"],
        )
        for name, (current, bound, dropped) in self.tables.items():
            try:
                values = current(), dropped()
            except Exception:  # a table being rebuilt mid-scrape: skip it this once
                continue
            size.add_metric([name], values[0])
            limit.add_metric([name], bound)
            evicted.add_metric([name], values[1])
        yield size
        yield limit
        yield evicted
