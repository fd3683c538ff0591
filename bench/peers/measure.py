"""What a run costs and what the pods saw: CPU seconds from /proc, load average, prefix hits.

CPU is read from ``/proc/<pid>/stat`` (user + system time of every thread) for each
process of a route and all its descendants, before and after the load, so a route's
figure is its own processes' time only. The machine's busy share comes from
``/proc/stat`` and includes everything else running on it (other users' work too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import aiohttp

from collector.parse import parse

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # fields from the state (field 3) on


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def process_tree(pid: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    kids = _children() if kids is None else kids
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads) so far; 0 if it is gone."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12])) / _TICK if f else 0.0


@dataclass
class CpuMeter:
    """CPU seconds per named process tree between :meth:`start` and :meth:`stop`."""

    pids: dict[str, int]
    before: dict[int, float] = field(default_factory=dict)
    trees: dict[str, list[int]] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        kids = _children()
        self.trees = {n: process_tree(p, kids) for n, p in self.pids.items()}
        self.before = {p: cpu_seconds(p) for tree in self.trees.values() for p in tree}

    def stop(self) -> dict[str, float]:
        self.used = {
            n: sum(max(0.0, cpu_seconds(p) - self.before.get(p, 0.0)) for p in tree)
            for n, tree in self.trees.items()
        }
        return self.used

    @property
    def total(self) -> float:
        return sum(self.used.values())


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


def loadavg() -> tuple[float, float, float]:
    a, b, c = os.getloadavg()
    return a, b, c


@dataclass
class PrefixCounters:
    queries: float = 0.0
    hits: float = 0.0

    @property
    def rate(self) -> float:
        return self.hits / self.queries if self.queries else float("nan")


async def prefix_counters(addresses: list[str]) -> PrefixCounters:
    """Summed prefix-cache query and hit tokens over the pods' ``/metrics`` (vLLM or SGLang)."""
    out = PrefixCounters()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for addr in addresses:
            async with session.get(f"http://{addr}/metrics") as resp:
                page = parse(await resp.read())
            out.queries += page.prefix_queries
            out.hits += page.prefix_hits
    return out
