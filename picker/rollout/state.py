"""A rollout's shared state (one JetStream KV record) and the pure decision that moves it.

The record (``<ns>.<pool>.<rewrite>.<rule>.<canary>``; a new canary name is a new rollout)
holds the current step, the canary's weight, the phase (``progressing``, ``complete``,
``rolled_back``), when the step started (wall time, so every replica and a restarted one
agree on how long it has been held) and the reason of the last change. Replicas move it
only by compare-and-set, so a step is taken once even when several replicas decide it at
the same moment.

:func:`decide`: a regression at any time rolls back to 0% at once: the canary's error rate
above the stable model's by more than ``max_error_rate_increase`` (once it has
``min_errors`` errors), or its p90 TTFT or p90 NTPOT above ``max_latency_ratio`` times
the stable model's (once both have ``min_requests`` completions in the step). Otherwise
the step advances once it has been held ``hold_s`` and the canary completed
``min_requests`` requests in it; reaching the last step (100%) completes the rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from picker.rollout.spec import RolloutSettings
from picker.rollout.stats import Summary

PROGRESSING, COMPLETE, ROLLED_BACK = "progressing", "complete", "rolled_back"


class RolloutState(msgspec.Struct, kw_only=True):
    stable: str
    canary: str
    step: int = 0  # index into the settings' steps
    weight: int = 0  # canary percent in force
    phase: str = PROGRESSING
    since: float = 0.0  # wall time the current step (or phase) started
    reason: str = ""
    updated_by: str = ""


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(RolloutState)


def encode(st: RolloutState) -> bytes:
    return _enc.encode(st)


def decode(data: bytes) -> RolloutState | None:
    try:
        return _dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def initial(stable: str, canary: str, settings: RolloutSettings, now: float, me: str) -> RolloutState:
    return RolloutState(
        stable=stable, canary=canary, step=0, weight=settings.steps[0], since=now, reason="started",
        updated_by=me,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decision:
    state: RolloutState
    kind: str  # "advance", "complete", "rollback"


def regression(s: RolloutSettings, canary: Summary, stable: Summary) -> str:
    """Why the canary is worse than the stable model beyond the bounds ("" = it is not)."""
    if canary.errors >= s.min_errors and canary.error_rate > stable.error_rate + s.max_error_rate_increase:
        return f"error rate {canary.error_rate:.3f} vs stable {stable.error_rate:.3f}"
    if canary.count - canary.errors >= s.min_requests and stable.count - stable.errors >= s.min_requests:
        limit = s.max_latency_ratio
        if canary.p90_ttft > stable.p90_ttft * limit + s.latency_slack_s:
            return f"p90 TTFT {canary.p90_ttft:.4f}s vs stable {stable.p90_ttft:.4f}s"
        if canary.p90_ntpot > stable.p90_ntpot * limit + s.latency_slack_s / 10:
            return f"p90 NTPOT {canary.p90_ntpot:.5f}s vs stable {stable.p90_ntpot:.5f}s"
    return ""


def decide(
    st: RolloutState, s: RolloutSettings, canary: Summary, stable: Summary, now: float, me: str
) -> Decision | None:
    """The next state of a progressing rollout, or None to keep the current one."""
    if st.phase != PROGRESSING:
        return None
    why = regression(s, canary, stable)
    if why:
        new = msgspec.structs.replace(st, weight=0, phase=ROLLED_BACK, since=now, reason=why, updated_by=me)
        return Decision(new, "rollback")
    if now - st.since < s.hold_s or canary.count < s.min_requests:
        return None
    step = min(st.step + 1, len(s.steps) - 1)
    weight = s.steps[step]
    done = step == len(s.steps) - 1
    new = msgspec.structs.replace(
        st,
        step=step,
        weight=weight,
        phase=COMPLETE if done else PROGRESSING,
        since=now,
        reason=f"step held {now - st.since:.1f}s, canary within bounds",
        updated_by=me,
    )
    return Decision(new, "complete" if done else "advance")
