"""Online latency prediction (TTFT, TPOT per endpoint) and SLO-aware routing support; see README.md."""

from .predictor import LatencyPredictor, Prediction
from .rls import OnlineRegression

__all__ = ["LatencyPredictor", "OnlineRegression", "Prediction"]
