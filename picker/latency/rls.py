"""Recursive least squares with forgetting: a linear model that learns one sample at a time.

Why this and not a gradient-boosted model (upstream's XGBoost sidecar): a pod's latency is
close to linear in the work ahead of a request once the hardware is fixed (the step time
is linear in tokens and context, design.md §5), so one small linear model *per
accelerator* captures most of it; RLS converges in tens of samples without a learning
rate to tune, costs O(d²) per sample in pure Python (d = 3: ~8 µs), and forgetting
(``lam`` < 1) lets it follow a pod whose behaviour drifts. No numpy: at d <= 5 plain
lists are faster than array calls. The covariance is re-symmetrized after every update
(the plain recursion drifts to an indefinite P over a long run and freezes the model).
"""

from __future__ import annotations

import math

__all__ = ["OnlineRegression"]


class OnlineRegression:
    """``y ≈ w · x``, updated by :meth:`update`; ``n`` samples seen."""

    __slots__ = ("d", "lam", "n", "nonneg", "p", "prior_var", "resets", "w")

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
        self.prior_var = prior_var
        self.resets = 0  # times P lost positivity and restarted from the prior
        self.p = self._prior()

    def _prior(self) -> list[list[float]]:
        d, v = self.d, self.prior_var
        return [[v if i == j else 0.0 for j in range(d)] for i in range(d)]

    def predict(self, x: list[float]) -> float:
        w = self.w
        t = 0.0
        for i in range(self.d):
            t += w[i] * x[i]
        return t

    def update(self, x: list[float], y: float, scale: float = 1.0) -> None:
        """One sample; non-finite inputs are ignored (a bad completion must not poison the model).

        ``scale`` multiplies the sample's row and target (weighted least squares with weight
        ``scale²``): ``scale = 1 / y`` fits relative errors, so a 5-ms miss on a 25-ms TTFT
        weighs what a 100-ms miss on a 500-ms one does (the error the model reports is a
        percentage; plain least squares lets the few long queues set every coefficient).

        Plain loops over local lists, no generator expressions: every replica runs this
        for every completion in the pool (four times: TTFT and TPOT, own and pooled model).
        """
        isfinite = math.isfinite
        if not isfinite(y):
            return
        for v in x:
            if not isfinite(v):
                return
        if scale != 1.0:
            if not isfinite(scale) or scale <= 0.0:
                return
            x = [v * scale for v in x]
            y = y * scale
        d, p, lam, w = self.d, self.p, self.lam, self.w
        rng = range(d)
        px = []
        xpx = 0.0
        pred = 0.0
        for i in rng:
            row = p[i]
            s = 0.0
            for j in rng:
                s += row[j] * x[j]
            px.append(s)
            xpx += x[i] * s
            pred += w[i] * x[i]
        denom = lam + xpx
        if denom <= 1e-12 or not isfinite(denom):
            return
        k = [v / denom for v in px]
        err = y - pred
        for i in rng:
            w[i] += k[i] * err
        for i in self.nonneg:
            if w[i] < 0.0 and p[i][i] > 0.0:
                # Project onto w[i] = 0 in P's metric: the others absorb what the negative
                # coefficient was explaining (the intercept takes the mean), as a fit with
                # that coefficient fixed at 0 would.
                c = w[i] / p[i][i]
                for j in rng:
                    w[j] -= p[j][i] * c
                w[i] = 0.0
        # P = (P - k (P x)^T) / lam, then made symmetric again. In exact arithmetic it stays
        # symmetric positive definite; in floating point this form drifts, and once P is
        # indefinite every later sample is skipped or diverges (measured: with the default
        # forgetting, a lull of a few thousand identical rows in 20,000 samples left
        # w ~ -5e8 and the model frozen). Averaging the two triangles keeps it definite.
        inv = 1.0 / lam
        for i in rng:
            ki = k[i]
            row = p[i]
            for j in rng:
                row[j] = (row[j] - ki * px[j]) * inv
        tr = 0.0
        for i in rng:
            row = p[i]
            for j in range(i + 1, d):
                v = (row[j] + p[j][i]) * 0.5
                row[j] = v
                p[j][i] = v
            tr += row[i]
        # keep P bounded: forgetting without excitation would let it grow without limit;
        # and a P that is no longer positive on its diagonal starts again from the prior
        # (keeping w): a model that learns nothing more is worse than one that is unsure
        if tr > 1e8:
            s = 1e8 / tr
            for row in p:
                for j in rng:
                    row[j] *= s
        for i in rng:
            if not p[i][i] > 0.0:  # also NaN
                self.p = self._prior()
                self.resets += 1
                break
        self.n += 1
