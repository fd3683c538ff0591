"""Number formatting shared by the sweep's reports: one way to print a latency, a ratio, a run's cost.

Both reports print the same figures; keeping the formats here means a table in
``seed.md`` and one in ``replicas.md`` never disagree on units or rounding.
"""

from __future__ import annotations

import math


def fmt_ms(x: float) -> str:
    """Seconds shown as milliseconds, one decimal (NTPOT)."""
    return "n/a" if math.isnan(x) else f"{x * 1e3:.1f}"


def fmt_s(x: float) -> str:
    """Seconds, two decimals below 100 s (end-to-end latency)."""
    return "n/a" if math.isnan(x) else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def fmt_t(x: float) -> str:
    """A latency that spans milliseconds to minutes, with its unit."""
    if math.isnan(x):
        return "n/a"
    return f"{x * 1e3:.0f} ms" if x < 1.0 else f"{x:.1f} s"


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is missing or b is zero (a verdict skips it rather than divide by zero)."""
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def cost(results, wall_s: float, jobs: int) -> str:
    """What the run cost: points, wall time and the workers' CPU time (the figure on idle cores)."""
    cpu = sum(r.cpu_s for _, _, r in results)
    if cpu <= 0:
        return f"{len(results)} points, wall time {wall_s:.0f} s."
    return (
        f"{len(results)} points, wall time {wall_s:.0f} s; {cpu:.0f} CPU-s in the workers, i.e. "
        f"~{cpu / max(1, jobs):.0f} s of wall time on {jobs} idle cores."
    )


def pct(a: float, b: float) -> str:
    """a against b as a signed percentage."""
    r = ratio(a, b)
    return "n/a" if math.isnan(r) else f"{(r - 1) * 100:+.1f}%"
