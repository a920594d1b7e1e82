"""Per-anchor Beta posteriors with discounting (MoPPS, arXiv 2507.04632).

Each key keeps Beta(alpha, beta). On an update with s successes out of n, the old evidence decays
towards the prior by ``discount`` (so a prompt the policy has since learned is not judged by stale
outcomes) and the new evidence is added. Unseen keys get the prior: this predictor cannot
generalize, which is exactly what the shared predictor is for; it serves as a baseline and as
per-key evidence on top of the shared prior (see hybrid.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from .base import AnchorBatch, Prediction, Predictor, check_outcomes
from .calibration import calibration_report


class BetaPredictor(Predictor):
    name = "beta"

    def __init__(self, alpha0: float = 1.0, beta0: float = 1.0, discount: float = 0.9, max_keys: int = 1_000_000):
        if alpha0 <= 0 or beta0 <= 0:
            raise ValueError("predictor.alpha0 and predictor.beta0 must be > 0")
        if not 0.0 <= discount <= 1.0:
            raise ValueError("predictor.discount must be in [0, 1]")
        if max_keys < 1:
            raise ValueError("predictor.max_keys must be >= 1")
        self.alpha0, self.beta0, self.discount, self.max_keys = alpha0, beta0, discount, max_keys
        self._post: OrderedDict[str, tuple[float, float]] = OrderedDict()  # LRU: prefix keys rarely recur

    def evidence(self, keys) -> tuple[np.ndarray, np.ndarray]:
        """Pseudo-counts above the prior: (successes, failures) per key, zero for unseen keys."""
        s = np.zeros(len(keys))
        f = np.zeros(len(keys))
        for i, k in enumerate(keys):
            ab = self._post.get(k)
            if ab is not None:
                s[i], f[i] = ab[0] - self.alpha0, ab[1] - self.beta0
        return s, f

    def predict(self, anchors: AnchorBatch) -> Prediction:
        es, ef = self.evidence(anchors.keys)
        a, b = self.alpha0 + es, self.beta0 + ef
        n = a + b
        return Prediction(p=a / n, std=np.sqrt(a * b / (n * n * (n + 1))))

    def update(self, anchors: AnchorBatch, outcomes: np.ndarray) -> dict[str, float]:
        y = check_outcomes(anchors, outcomes)
        if not len(anchors):
            return {}
        metrics = calibration_report(self.predict(anchors).p, y, prefix="predictor/beta_")
        agg: dict[str, list[float]] = {}
        for k, v in zip(anchors.keys, y):
            agg.setdefault(k, [0.0, 0.0])
            agg[k][0] += v
            agg[k][1] += 1.0 - v
        lam = self.discount
        for k, (s, f) in agg.items():
            a, b = self._post.pop(k, (self.alpha0, self.beta0))
            a = lam * a + (1 - lam) * self.alpha0 + s
            b = lam * b + (1 - lam) * self.beta0 + f
            self._post[k] = (a, b)
        while len(self._post) > self.max_keys:
            self._post.popitem(last=False)
        metrics["predictor/beta_keys"] = float(len(self._post))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha0": self.alpha0,
            "beta0": self.beta0,
            "discount": self.discount,
            "keys": list(self._post.keys()),
            "ab": np.asarray(list(self._post.values()), dtype=np.float64).reshape(-1, 2),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha0, self.beta0, self.discount = state["alpha0"], state["beta0"], state["discount"]
        ab = np.asarray(state["ab"], dtype=np.float64).reshape(-1, 2)
        self._post = OrderedDict((k, (float(a), float(b))) for k, (a, b) in zip(state["keys"], ab))
