"""Shared prior + per-key evidence: what TRACE uses by default.

The shared predictor's mean becomes a Beta prior; the per-key Beta posterior (MoPPS) contributes
the outcomes this very prompt produced in earlier steps as pseudo-counts on top. A new prompt is
judged by the shared model alone; a prompt seen many times is judged mostly by its own history.

How much the prior weighs (its concentration) is *not* the ensemble's spread alone: that spread is
epistemic (how unsure the model is of E[p | features]), while anchors with identical features
still differ in their own success rate. That heterogeneity is fitted by empirical Bayes: after
each update, one concentration kappa maximizes the Beta-Binomial likelihood of the grouped
outcomes (successes among the n >= 2 leaves below each anchor) given the model's pre-update means.
The prior is Beta(kappa' m, kappa' (1 - m)) with kappa' = min(ensemble kappa, fitted kappa,
kappa_max). Without it a prior of concentration ~64 swamps the eight outcomes a prompt produced
last epoch, and a prompt that went 0/8 still looks "mid" (docs/benchmarks.md measures the effect).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .base import AnchorBatch, Prediction, Predictor, check_outcomes
from .beta import BetaPredictor
from .calibration import calibration_report
from .shared import EnsemblePredictor

KAPPA_GRID_MIN = 0.5
FIT_MOMENTUM = 0.5  # log-kappa moves half way to each new fit: one step's groups are a noisy sample


def fit_concentration(m: np.ndarray, s: np.ndarray, n: np.ndarray, kappa_max: float, points: int = 64) -> float | None:
    """Maximum-likelihood concentration of a Beta-Binomial with known means ``m``: the kappa for which
    s_i ~ BetaBinomial(n_i, kappa m_i, kappa (1 - m_i)) is most likely. None without groups of n >= 2."""
    keep = n >= 2
    if not keep.any():
        return None
    m = torch.from_numpy(np.clip(m[keep], 1e-4, 1 - 1e-4)).double()
    s = torch.from_numpy(s[keep]).double()
    n = torch.from_numpy(n[keep]).double()
    grid = torch.logspace(np.log10(KAPPA_GRID_MIN), np.log10(max(kappa_max, KAPPA_GRID_MIN * 2)), points, dtype=torch.float64)
    a = grid[:, None] * m[None, :]
    b = grid[:, None] * (1 - m[None, :])
    lg = torch.special.gammaln
    ll = (lg(a + s) + lg(b + n - s) - lg(a + b + n) - lg(a) - lg(b) + lg(a + b)).sum(dim=1)
    return float(grid[int(ll.argmax())])


def group_by_key(keys: Sequence[str], y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, successes, count) per distinct key, the mean taken from the key's first row."""
    pos: dict[str, int] = {}
    idx = np.fromiter((pos.setdefault(k, len(pos)) for k in keys), np.int64, len(keys))
    first = np.unique(idx, return_index=True)[1]  # groups are numbered in order of first appearance
    s = np.bincount(idx, weights=y, minlength=len(first))
    n = np.bincount(idx, minlength=len(first)).astype(np.float64)
    return m[first], s, n


class HybridPredictor(Predictor):
    name = "hybrid"

    def __init__(self, shared: EnsemblePredictor, beta: BetaPredictor, kappa_max: float = 64.0):
        if kappa_max <= 0:
            raise ValueError("predictor.kappa_max must be > 0")
        self.shared, self.beta, self.kappa_max = shared, beta, kappa_max
        self.kappa_fit: float | None = None

    def predict(self, anchors: AnchorBatch) -> Prediction:
        return self._posterior(self.shared.predict(anchors), self.beta.evidence(anchors.keys))

    def _posterior(self, shared: Prediction, evidence: tuple[np.ndarray, np.ndarray]) -> Prediction:
        kmax = self.kappa_max if self.kappa_fit is None else min(self.kappa_max, self.kappa_fit)
        a, b = shared.beta_params(kappa_min=min(1.0, kmax), kappa_max=kmax)
        es, ef = evidence
        a, b = a + es, b + ef
        n = a + b
        return Prediction(p=a / n, std=np.sqrt(a * b / (n * n * (n + 1))))

    def update(self, anchors: AnchorBatch, outcomes: np.ndarray) -> dict[str, float]:
        y = check_outcomes(anchors, outcomes)
        if not len(anchors):
            return {}
        shared = self.shared.predict(anchors)  # before the update: out-of-sample for this batch
        m = shared.p
        evidence = self.beta.evidence(anchors.keys)  # before the update, like ``shared``
        metrics = calibration_report(self._posterior(shared, evidence).p, y, prefix="predictor/hybrid_")
        metrics.update(self.shared.update(anchors, outcomes, before=shared))
        metrics.update(self.beta.update(anchors, outcomes, before=self.beta.from_evidence(*evidence)))
        if self.shared.updates > 1:  # the first update's "means" are the untrained 0.5 everywhere
            fit = fit_concentration(*group_by_key(anchors.keys, y, m), kappa_max=self.kappa_max)
            if fit is not None:
                old = fit if self.kappa_fit is None else self.kappa_fit
                self.kappa_fit = float(np.exp((1 - FIT_MOMENTUM) * np.log(old) + FIT_MOMENTUM * np.log(fit)))
        if self.kappa_fit is not None:
            metrics["predictor/hybrid_kappa"] = self.kappa_fit
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "shared": self.shared.state_dict(),
            "beta": self.beta.state_dict(),
            "kappa_max": self.kappa_max,
            "kappa_fit": self.kappa_fit,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shared.load_state_dict(state["shared"])
        self.beta.load_state_dict(state["beta"])
        self.kappa_max = state["kappa_max"]
        self.kappa_fit = state.get("kappa_fit")


class OraclePredictor(Predictor):
    """The true conditional success probability (simulator only): the allocation upper bound."""

    name = "oracle"

    def predict(self, anchors: AnchorBatch) -> Prediction:
        if anchors.true_p is None:
            raise ValueError("the oracle predictor needs true_p, which only the simulator provides")
        return Prediction(p=anchors.true_p.copy(), std=np.zeros(len(anchors)))

    def update(self, anchors: AnchorBatch, outcomes: np.ndarray) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
