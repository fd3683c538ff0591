"""The picker replicas' own CPU in the DES: a decision waits for its replica's core.

Without this the DES's pickers decide in zero time at any rate, so no figure can say what
a replica carries. Each picker replica is one Python process, i.e. one core (its event
loop). This module models that core as a FIFO server in virtual time:

* **a decision** costs ``decision_s`` of the core: the request is decided (and reaches its
  engine) when the core has finished everything queued before it plus this decision;
* **a streamed response** costs ``per_token_s`` per output token (one ext_proc round trip
  per SSE event in FULL_DUPLEX_STREAMED). That work reaches the replicas as the engines
  emit tokens, at each step end, split evenly over the replicas (exact for one replica and
  for round-robin spread on average), and queues like the decisions.

The figures come from ``bench/picker_extproc_bench.py`` (server CPU per request of one
picker process over real gRPC, and its streamed-response points for the per-event cost);
:data:`MEASURED` holds the values written in ``bench/results/picker-extproc.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MEASURED", "PickerCores", "PickerCpu"]


@dataclass(frozen=True)
class PickerCpu:
    """What one picker replica's core spends: per decision, and per streamed output token."""

    decision_s: float = 0.0
    per_token_s: float = 0.0
    name: str = "free"

    @property
    def enabled(self) -> bool:
        return self.decision_s > 0.0 or self.per_token_s > 0.0


# bench/results/picker-extproc.md, concurrency 32, request log on (the production default):
# one full exchange with a JSON response (the seed experiment's responses are not
# streamed) is 743 us of the picker process's CPU, the quiet-machine run; a streamed
# response adds 0.082 of that per SSE event (186 us per event against 2,260 us per JSON
# exchange, both from this branch's run on the loaded machine), i.e. 61 us per token.
MEASURED = {
    "free": PickerCpu(0.0, 0.0, "free"),
    "decision": PickerCpu(743e-6, 0.0, "decision"),
    "decision+stream": PickerCpu(743e-6, 61e-6, "decision+stream"),
}


class PickerCores:
    """One FIFO core per picker replica, in virtual time."""

    __slots__ = ("busy_s", "cpu", "free_at", "n", "waits")

    def __init__(self, cpu: PickerCpu, replicas: int) -> None:
        self.cpu = cpu
        self.n = max(1, replicas)
        self.free_at = [0.0] * self.n
        self.busy_s = [0.0] * self.n
        self.waits: list[float] = []  # arrival -> decided, every decision

    def decide_at(self, p: int, now: float) -> float:
        """Queue a decision on replica ``p`` arriving at ``now``; returns when it is made."""
        start = self.free_at[p] if self.free_at[p] > now else now
        done = start + self.cpu.decision_s
        self.free_at[p] = done
        self.busy_s[p] += self.cpu.decision_s
        self.waits.append(done - now)
        return done

    def on_tokens(self, now: float, tokens: int) -> None:
        """An engine emitted ``tokens`` streamed tokens at ``now``: their round trips queue up."""
        if tokens <= 0 or self.cpu.per_token_s <= 0.0:
            return
        work = tokens * self.cpu.per_token_s / self.n
        for p in range(self.n):
            f = self.free_at[p]
            self.free_at[p] = (f if f > now else now) + work
            self.busy_s[p] += work

    def utilization(self, span_s: float) -> float:
        """The busiest replica's core: busy seconds / ``span_s`` (> 1: it cannot keep up)."""
        return max(self.busy_s) / span_s if span_s > 0 else 0.0
