"""The features a latency prediction reads: the request's uncached prompt and the pod's work ahead.

TTFT ≈ api + queueing + prefill: the time to run the prefill work ahead of the request
(the pod's waiting requests priced at the pool's average request size, plus what was
sent to it since its last snapshot) *and* its own uncached prompt, as one term: a token
of someone else's prompt ahead costs what a token of one's own does, so the per-token
cost learnt from prompt lengths at low load also prices a queue the model has not seen
yet (separate terms extrapolated badly into an overload). Steps also grow with the
running batch. TPOT ≈ a decode step: its fixed part plus terms in the
batch size and the context resident in the batch. Both are linear in these once the
accelerator is fixed, hence one model per accelerator (``rls.py``). Units keep the
features near 1 (thousands of tokens, tens of requests) so the regression is well
conditioned. :meth:`~.predictor.LatencyPredictor.predict` evaluates the same features
inline, with these units folded into the weights (the test checks the two agree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from picker.scheduling.state import EndpointState

__all__ = ["D_TPOT", "D_TTFT", "tpot_features", "ttft_features"]

D_TTFT = 3
D_TPOT = 3
TTFT_NONNEG = (1, 2)
TPOT_NONNEG = (1, 2)


def ttft_features(st: EndpointState, uncached_prompt: int) -> list[float]:
    """[1, prefill work ahead incl. the request's own uncached prompt (k tokens), batch (10s)]."""
    load = st.load
    ahead_ktok = (st.queued_tokens + load.tokens + uncached_prompt) * 1e-3
    return [1.0, ahead_ktok, (st.running + load.n) * 0.1]


def tpot_features(st: EndpointState) -> list[float]:
    """[1, batch size (10s of requests), context resident in the batch (10k tokens)]."""
    load = st.load
    batch = (st.running + st.waiting + load.n) * 0.1
    ctx = (st.kv_tokens + load.tokens) * 1e-4
    return [1.0, batch, ctx]
