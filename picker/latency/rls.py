"""Recursive least squares with forgetting: a linear model that learns one sample at a time.

Why this and not a gradient-boosted model (upstream's XGBoost sidecar): a pod's latency is
close to linear in the work ahead of a request once the hardware is fixed (the step time
is linear in tokens and context, design.md §5), so one small linear model *per
accelerator* captures most of it; RLS converges in tens of samples without a learning
rate to tune, costs O(d²) per sample in pure Python (d = 3..5: ~10-20 µs), and forgetting
(``lam`` < 1) lets it follow a pod whose behaviour drifts. No numpy: at d <= 5 plain
lists are faster than array calls.
"""

from __future__ import annotations

import math

__all__ = ["OnlineRegression"]


class OnlineRegression:
    """``y ≈ w · x``, updated by :meth:`update`; ``n`` samples seen."""

    __slots__ = ("d", "lam", "n", "nonneg", "p", "w")

    def __init__(
        self,
        d: int,
        lam: float = 0.998,
        prior_var: float = 1e4,
        w0: list[float] | None = None,
        nonneg: tuple[int, ...] = (),
    ) -> None:
        self.d = d
        # Coefficients that physics says cannot be negative (more work ahead never makes a
        # request faster): kept >= 0 after every update, so the model cannot learn "a longer
        # queue is quicker" from a lull and extrapolate it into an overload.
        self.nonneg = nonneg
        self.lam = lam
        self.n = 0
        self.w = list(w0) if w0 is not None else [0.0] * d
        self.p = [[prior_var if i == j else 0.0 for j in range(d)] for i in range(d)]

    def predict(self, x: list[float]) -> float:
        w = self.w
        return sum(w[i] * x[i] for i in range(self.d))

    def update(self, x: list[float], y: float, scale: float = 1.0) -> None:
        """One sample; non-finite inputs are ignored (a bad completion must not poison the model).

        ``scale`` multiplies the sample's row and target (weighted least squares with weight
        ``scale²``): ``scale = 1 / y`` fits relative errors, so a 5-ms miss on a 25-ms TTFT
        weighs what a 100-ms miss on a 500-ms one does (the error the model reports is a
        percentage; plain least squares lets the few long queues set every coefficient).
        """
        if not math.isfinite(y) or not all(math.isfinite(v) for v in x):
            return
        if scale != 1.0:
            if not math.isfinite(scale) or scale <= 0.0:
                return
            x = [v * scale for v in x]
            y = y * scale
        d, p, lam = self.d, self.p, self.lam
        px = [sum(p[i][j] * x[j] for j in range(d)) for i in range(d)]
        denom = lam + sum(x[i] * px[i] for i in range(d))
        if denom <= 1e-12 or not math.isfinite(denom):
            return
        k = [v / denom for v in px]
        err = y - self.predict(x)
        w = self.w
        for i in range(d):
            w[i] += k[i] * err
        for i in self.nonneg:
            if w[i] < 0.0 and p[i][i] > 0.0:
                # Project onto w[i] = 0 in P's metric: the others absorb what the negative
                # coefficient was explaining (the intercept takes the mean), as a fit with
                # that coefficient fixed at 0 would.
                c = w[i] / p[i][i]
                for j in range(d):
                    w[j] -= p[j][i] * c
                w[i] = 0.0
        # P = (P - k (P x)^T) / lam ; P stays symmetric
        inv = 1.0 / lam
        for i in range(d):
            ki = k[i]
            row = p[i]
            for j in range(d):
                row[j] = (row[j] - ki * px[j]) * inv
        # keep P bounded: forgetting without excitation would let it grow without limit
        tr = sum(p[i][i] for i in range(d))
        if tr > 1e8:
            s = 1e8 / tr
            for row in p:
                for j in range(d):
                    row[j] *= s
        self.n += 1
