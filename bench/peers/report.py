"""``bench/results/peers.md``: one table per workload, ratios to InferGate, and where it ran."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CUT = "cut at the drain cap"
LABELS = {"req_per_s": "req/s", "ttft_p90_s": "TTFT p90", "ntpot_p90_s": "NTPOT p90"}
METRICS = (  # key, header, unit, higher is better
    ("req_per_s", "req/s", "", True),
    ("output_tok_per_s", "out tok/s", "", True),
    ("ttft_p50_s", "TTFT p50", "ms", False),
    ("ttft_p90_s", "TTFT p90", "ms", False),
    ("ntpot_p90_s", "NTPOT p90", "ms", False),
    ("latency_p90_s", "e2e p90", "s", False),
)


@dataclass
class Outcome:
    """One route on one workload, averaged over its repetitions (or why it failed)."""

    workload: str
    route: str
    runs: list[dict] = field(default_factory=list)  # H100-equivalent summaries + extras
    failure: str = ""

    def mean(self, key: str) -> float:
        xs = [r[key] for r in self.runs if isinstance(r.get(key), int | float) and not math.isnan(r[key])]
        return sum(xs) / len(xs) if xs else math.nan

    def errors(self) -> str:
        total: dict[str, int] = {}
        for r in self.runs:
            for k, v in r.get("errors", {}).items():
                total[k] = total.get(k, 0) + v
        n = sum(total.values())
        sent = sum(r.get("sent", 0) for r in self.runs)
        if not n:
            return "0"
        kinds = ", ".join(
            f"{CUT if k == 'cancelled' else k}x{v}"
            for k, v in sorted(total.items(), key=lambda kv: -kv[1])[:3]
        )
        return f"{n}/{sent} ({kinds})"


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "ms":
        return f"{value * 1000:.0f}" if value >= 0.1 else f"{value * 1000:.1f}"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def ratio(value: float, ref: float, higher_better: bool) -> str:
    """InferGate's advantage: > 1 means InferGate is better on this figure."""
    if math.isnan(value) or math.isnan(ref) or value <= 0 or ref <= 0:
        return "-"
    return f"{(ref / value) if higher_better else (value / ref):.2f}"


def table(outcomes: list[Outcome]) -> list[str]:
    ref = next((o for o in outcomes if o.route == "InferGate" and o.runs), None)
    head = ["route", *(f"{h} ({u})" if u else h for _, h, u, _ in METRICS), "errors", "prefix hit",
            "route CPU s/1k req", "IG adv. req/s", "IG adv. TTFT p90", "IG adv. NTPOT p90"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o in outcomes:
        if not o.runs:
            lines.append(f"| {o.route} | failed: {o.failure} |" + " |" * (len(head) - 2))
            continue
        cells = [o.route, *(fmt(o.mean(k), u) for k, _, u, _ in METRICS), o.errors()]
        cells.append(
            f"{o.mean('prefix_hit_rate') * 100:.0f}%" if not math.isnan(o.mean("prefix_hit_rate")) else "-"
        )
        cells.append(f"{o.mean('cpu_per_1k'):.1f}")
        if ref is None or o is ref:
            cells += ["1.00", "1.00", "1.00"] if o is ref else ["-"] * 3
        else:
            for key, hb in (("req_per_s", True), ("ttft_p90_s", False), ("ntpot_p90_s", False)):
                cells.append(ratio(o.mean(key), ref.mean(key), hb))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def cpu_breakdown(outcomes: list[Outcome]) -> str:
    o = next((o for o in outcomes if o.route == "InferGate" and o.runs), None)
    if o is None:
        return ""
    parts: dict[str, float] = {}
    for r in o.runs:
        for k, v in r.get("cpu_by_process", {}).items():
            parts[k] = parts.get(k, 0.0) + v
    ok = sum(r.get("sent", 0) for r in o.runs) or 1  # per request sent, as cpu_per_1k
    text = ", ".join(f"{k} {v / ok * 1000:.1f}" for k, v in sorted(parts.items()))
    if not math.isnan(o.mean("idle_cores")):
        idle: dict[str, float] = {}
        for r in o.runs:
            for k, v in r.get("idle_by_process", {}).items():
                idle[k] = idle.get(k, 0.0) + v / len(o.runs)
        text += (
            f". Fixed cost: {o.mean('idle_cores'):.3f} cores at idle ("
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(idle.items()))
            + f"), i.e. {o.mean('fixed_per_1k'):.1f} s per 1,000 requests over this run's wall time; "
            f"marginal: {o.mean('marginal_per_1k'):.1f} s per 1,000 requests"
        )
    return text


def cpu_goal(ref: Outcome, peers: list[Outcome]) -> str:
    """InferGate's CPU per 1,000 requests against the lightest peer's (goal: within 3x)."""
    lightest = min(peers, key=lambda o: o.mean("cpu_per_1k"))
    a, b = ref.mean("cpu_per_1k"), lightest.mean("cpu_per_1k")
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return ""
    text = f"; CPU/1k req {a / b:.1f}x the lightest peer's ({lightest.route}, {b:.1f} s)"
    if not math.isnan(ref.mean("marginal_per_1k")):
        text += f", marginal alone {ref.mean('marginal_per_1k') / b:.1f}x"
    return text


def goals(by_workload: dict[str, list[Outcome]]) -> list[str]:
    """The issue's goals, checked mechanically (a peer within 2% counts as matched)."""
    lines = []
    for wl, outs in by_workload.items():
        ref = next((o for o in outs if o.route == "InferGate" and o.runs), None)
        peers = [o for o in outs if o.runs and o.route not in ("InferGate", "Envoy round-robin")]
        if ref is None or not peers:
            continue
        worse = []
        for o in peers:
            for key, hb in (("req_per_s", True), ("ttft_p90_s", False), ("ntpot_p90_s", False)):
                a, b = ref.mean(key), o.mean(key)
                if (hb and a < 0.98 * b) or (not hb and a > 1.02 * b):
                    worse.append(f"{o.route} {LABELS[key]}")
        best_ttft = min(peers, key=lambda o: o.mean("ttft_p90_s"))
        adv = (
            best_ttft.mean("ttft_p90_s") / ref.mean("ttft_p90_s") if ref.mean("ttft_p90_s") > 0 else math.nan
        )
        lines.append(
            f"- **{wl}**: "
            + ("matches or beats every peer policy" if not worse else "behind on " + "; ".join(worse))
            + f"; p90 TTFT vs the best peer ({best_ttft.route}): {adv:.2f}x"
            + cpu_goal(ref, peers)
        )
    return lines


def document(
    *,
    command: str,
    provenance: dict[str, str],
    machine: dict[str, str],
    settings: list[str],
    by_workload: dict[str, list[Outcome]],
    titles: dict[str, str],
    runs_table: list[str],
) -> str:
    out = ["# InferGate side by side with the real peer routers", ""]
    out += [f"Command: `{command}`", ""]
    out += ["| what | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in provenance.items())]
    out += ["", "Machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()), ""]
    out += ["## How", "", *(f"- {s}" for s in settings), ""]
    out += ["## Goals (issue #20), checked mechanically", "", *goals(by_workload), ""]
    for wl, outs in by_workload.items():
        out += [f"## {titles.get(wl, wl)}", "", *table(outs), ""]
        if b := cpu_breakdown(outs):
            out += [f"InferGate's CPU s per 1,000 requests by process: {b}.", ""]
    out += ["## Every run", "", *runs_table, ""]
    return "\n".join(out)
