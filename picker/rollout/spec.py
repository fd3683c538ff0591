"""Which rewrite rules roll out progressively, and with what settings (from annotations).

An InferenceModelRewrite carries the marker and its settings as annotations::

    metadata:
      annotations:
        infergate.io/rollout: "true"                        # the marker
        infergate.io/rollout-steps: "5,25,50,100"           # canary weight per step, percent
        infergate.io/rollout-hold: "60"                     # seconds each step is held at least
        infergate.io/rollout-min-requests: "20"             # canary completions per step before it advances
        infergate.io/rollout-max-error-rate-increase: "0.02"  # canary error rate over stable's
        infergate.io/rollout-max-latency-ratio: "1.5"       # canary p90 TTFT and NTPOT over stable's
        infergate.io/rollout-min-errors: "3"                # errors before the error bound is judged

Every rule of a marked resource with an Exact match and exactly two targets rolls out:
the first target is the stable model, the second the canary (their weights in the
resource are ignored while the rollout runs). An invalid value disables that resource's
rollout (logged once per configuration) and leaves its rules as written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.crds_routing import InferenceModelRewrite

log = logging.getLogger(__name__)

PREFIX = "infergate.io/rollout"
DEFAULT_STEPS = (5, 25, 50, 100)


@dataclass(frozen=True, slots=True)
class RolloutSettings:
    steps: tuple[int, ...] = DEFAULT_STEPS
    hold_s: float = 60.0
    min_requests: int = 20
    max_error_rate_increase: float = 0.02
    max_latency_ratio: float = 1.5
    latency_slack_s: float = 0.005  # absolute slack, so two tiny latencies never look 1.5x apart
    min_errors: int = 3


@dataclass(frozen=True, slots=True)
class Rollout:
    """One rule under rollout: ``model`` (the client-facing name) moves from stable to canary."""

    namespace: str
    rewrite: str
    rule: int
    model: str
    stable: str
    canary: str
    settings: RolloutSettings

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.rewrite}/{self.rule}/{self.model}"


def _settings(notes: dict[str, str]) -> RolloutSettings:
    def num(key: str, default: float, lo: float, hi: float) -> float:
        raw = notes.get(f"{PREFIX}-{key}")
        if raw is None:
            return default
        value = float(raw)
        if not lo <= value <= hi:
            raise ValueError(f"{PREFIX}-{key}: {raw!r} not in [{lo}, {hi}]")
        return value

    steps = DEFAULT_STEPS
    if f"{PREFIX}-steps" in notes:
        steps = tuple(int(x) for x in notes[f"{PREFIX}-steps"].split(",") if x.strip())
        if not steps or any(not 1 <= s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(f"{PREFIX}-steps: increasing percentages in [1, 100], got {steps}")
        if steps[-1] != 100:
            steps = (*steps, 100)
    return RolloutSettings(
        steps=steps,
        hold_s=num("hold", 60.0, 0.0, 86400.0),
        min_requests=int(num("min-requests", 20, 1, 1e6)),
        max_error_rate_increase=num("max-error-rate-increase", 0.02, 0.0, 1.0),
        max_latency_ratio=num("max-latency-ratio", 1.5, 1.0, 100.0),
        min_errors=int(num("min-errors", 3, 1, 1e6)),
    )


def rollouts_of(rewrites: list[InferenceModelRewrite], rule_of: dict) -> list[Rollout]:
    """The rules under rollout, for the models whose Exact rule they are (``ModelTable.rule_of``)."""
    out: list[Rollout] = []
    for model, (rw, index) in sorted(rule_of.items()):
        notes = dict(rw.rollout)
        if notes.get(PREFIX, "").lower() not in ("true", "1", "yes"):
            continue
        rule = rw.rules[index]
        if len(rule.targets) != 2:
            log.warning(
                "rollout needs exactly two targets (stable, canary); rule left as written",
                extra={"rewrite": f"{rw.namespace}/{rw.name}", "rule": index},
            )
            continue
        try:
            settings = _settings(notes)
        except ValueError as exc:
            log.error(
                "invalid rollout annotation; rule left as written",
                extra={"rewrite": f"{rw.namespace}/{rw.name}", "error": str(exc)},
            )
            continue
        stable, canary = rule.targets[0].model, rule.targets[1].model
        out.append(Rollout(rw.namespace, rw.name, index, model, stable, canary, settings))
    return out
