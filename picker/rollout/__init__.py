"""Progressive rollout of rewrite rules marked with ``infergate.io/rollout`` (see README.md)."""

from picker.rollout.controller import RolloutController
from picker.rollout.spec import Rollout, RolloutSettings, rollouts_of

__all__ = ["Rollout", "RolloutController", "RolloutSettings", "rollouts_of"]
