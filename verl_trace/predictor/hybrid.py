"""Shared prior + per-key evidence: what TRACE uses by default.

The shared predictor's (p, sd) becomes a Beta prior by moment matching; the per-key Beta
posterior (MoPPS) contributes the outcomes this very prompt produced in earlier steps as
pseudo-counts on top. A new prompt is judged by the shared model alone; a prompt seen many times
is judged mostly by its own history.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import AnchorBatch, Prediction, Predictor
from .beta import BetaPredictor
from .calibration import calibration_report
from .shared import EnsemblePredictor


class HybridPredictor(Predictor):
    name = "hybrid"

    def __init__(self, shared: EnsemblePredictor, beta: BetaPredictor, kappa_max: float = 64.0):
        if kappa_max <= 0:
            raise ValueError("predictor.kappa_max must be > 0")
        self.shared, self.beta, self.kappa_max = shared, beta, kappa_max

    def predict(self, anchors: AnchorBatch) -> Prediction:
        a, b = self.shared.predict(anchors).beta_params(kappa_max=self.kappa_max)
        es, ef = self.beta.evidence(anchors.keys)
        a, b = a + es, b + ef
        n = a + b
        return Prediction(p=a / n, std=np.sqrt(a * b / (n * n * (n + 1))))

    def update(self, anchors: AnchorBatch, outcomes: np.ndarray) -> dict[str, float]:
        metrics = calibration_report(self.predict(anchors).p, np.asarray(outcomes, float), prefix="predictor/hybrid_")
        metrics.update(self.shared.update(anchors, outcomes))
        metrics.update(self.beta.update(anchors, outcomes))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"shared": self.shared.state_dict(), "beta": self.beta.state_dict(), "kappa_max": self.kappa_max}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shared.load_state_dict(state["shared"])
        self.beta.load_state_dict(state["beta"])
        self.kappa_max = state["kappa_max"]


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
