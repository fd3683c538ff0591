"""Prometheus text-format pieces shared by the page renderers: histograms, value and label
formatting. Rendered by hand, because a scrape must cost well under a millisecond."""

from __future__ import annotations

import math
from bisect import bisect_left


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """vLLM's 1-2-5 buckets up to ``max_value`` (e.g. max_model_len)."""
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_value:
                return out
            out.append(v)
        exp += 1


def fmt(v: float) -> str:
    """A sample value as prometheus_client writes it (``NaN``, ``+Inf``, floats)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def esc(v: str) -> str:
    """Escape a label value (backslash, double quote, newline)."""
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(pairs: dict[str, str]) -> str:
    """``k1="v1",k2="v2"`` (without braces), values escaped."""
    return ",".join(f'{k}="{esc(v)}"' for k, v in pairs.items())


class Histogram:
    """Bucket counts and a sum; renders as one Prometheus histogram family."""

    __slots__ = ("bounds", "counts", "help", "name", "sum")

    def __init__(self, name: str, help_: str, bounds: list[float]) -> None:
        self.name, self.help, self.bounds = name, help_, [float(b) for b in bounds]
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v

    def observe_n(self, v: float, n: int) -> None:
        """``n`` observations of the same value."""
        self.counts[bisect_left(self.bounds, v)] += n
        self.sum += v * n

    def fill_exponential(self, n: int, mean: float) -> None:
        """Pretend ``n`` observations drawn from an exponential of this ``mean`` (realistic
        counts for generated pages)."""
        prev = 0
        for i, b in enumerate(self.bounds):
            c = max(prev, int(n * (1.0 - math.exp(-b / mean)))) if mean > 0 else n
            self.counts[i] = c - prev
            prev = c
        self.counts[-1] = n - prev
        self.sum = n * mean

    def render(
        self, label_text: str, out: list[str], *, name: str | None = None, created: float | None = None
    ) -> None:
        """Append the family to ``out``; ``name`` overrides the family name, ``created``
        adds prometheus_client's ``_created`` series."""
        n = name or self.name
        out.append(f"# HELP {n} {self.help}\n# TYPE {n} histogram\n")
        acc = 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append(f'{n}_bucket{{{label_text},le="{b}"}} {acc}.0\n')
        acc += self.counts[-1]
        out.append(
            f'{n}_bucket{{{label_text},le="+Inf"}} {acc}.0\n{n}_count{{{label_text}}} {acc}.0\n'
            f"{n}_sum{{{label_text}}} {fmt(self.sum)}\n"
        )
        if created is not None:
            out.append(
                f"# HELP {n}_created {self.help}\n# TYPE {n}_created gauge\n"
                f"{n}_created{{{label_text}}} {created!r}\n"
            )
