"""Per-anchor Beta posteriors with discounting (MoPPS, arXiv 2507.04632).

Each key keeps Beta(alpha, beta): the prior plus discounted evidence (successes and failures the
key produced). The discount protects against stale outcomes: the policy changes between steps, so
outcomes from ``k`` training steps ago count ``discount ** k`` (``decay_by: steps``, the default;
the clock is the number of updates, one per training step). ``decay_by: visits`` is the original
MoPPS rule, kept for comparison: old evidence decays once each time the key is observed again, so
a prompt that returns after many steps is judged by outcomes of a policy long gone (issue 15;
docs/benchmarks.md, "Learning simulator", measures both). Unseen keys get the prior: this predictor
cannot generalize, which is what the shared predictor is for; it serves as a baseline and as
per-key evidence on top of the shared prior (see hybrid.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from .base import AnchorBatch, Prediction, Predictor, check_outcomes
from .calibration import calibration_report

DECAY_BY = ("steps", "visits")


class BetaPredictor(Predictor):
    name = "beta"

    def __init__(self, alpha0: float = 1.0, beta0: float = 1.0, discount: float = 0.9, max_keys: int = 1_000_000,
                 decay_by: str = "steps"):
        if alpha0 <= 0 or beta0 <= 0:
            raise ValueError("predictor.alpha0 and predictor.beta0 must be > 0")
        if not 0.0 <= discount <= 1.0:
            raise ValueError("predictor.discount must be in [0, 1]")
        if max_keys < 1:
            raise ValueError("predictor.max_keys must be >= 1")
        if decay_by not in DECAY_BY:
            raise ValueError(f"predictor.decay_by must be one of {DECAY_BY}, got {decay_by!r}")
        self.alpha0, self.beta0, self.discount, self.max_keys = alpha0, beta0, discount, max_keys
        self.decay_by = decay_by
        self.clock = 0  # updates so far: one per training step
        # key -> (successes, failures, clock when they were last brought up to date); LRU order,
        # since prefix keys rarely recur.
        self._ev: OrderedDict[str, tuple[float, float, int]] = OrderedDict()

    def _weight(self, age: int) -> float:
        return self.discount**age if self.decay_by == "steps" else 1.0

    def evidence(self, keys) -> tuple[np.ndarray, np.ndarray]:
        """Pseudo-counts above the prior, discounted to now: (successes, failures) per key, zero
        for unseen keys."""
        s = np.zeros(len(keys))
        f = np.zeros(len(keys))
        # map(dict.get) runs in C: most keys of a planner call are prefixes never seen before
        for i, e in enumerate(map(self._ev.get, keys)):
            if e is not None:
                w = self._weight(self.clock - e[2])
                s[i], f[i] = w * e[0], w * e[1]
        return s, f

    def predict(self, anchors: AnchorBatch) -> Prediction:
        return self.from_evidence(*self.evidence(anchors.keys))

    def from_evidence(self, es: np.ndarray, ef: np.ndarray) -> Prediction:
        """The posterior given ``evidence``'s pseudo-counts."""
        a, b = self.alpha0 + es, self.beta0 + ef
        n = a + b
        return Prediction(p=a / n, std=np.sqrt(a * b / (n * n * (n + 1))))

    def update(self, anchors: AnchorBatch, outcomes: np.ndarray, before: Prediction | None = None) -> dict[str, float]:
        """``before``: this predictor's prediction for ``anchors`` if the caller already made it (the
        hybrid does), so the ~30,000 keys of a step are not looked up twice."""
        y = check_outcomes(anchors, outcomes)
        if not len(anchors):
            return {}
        metrics = calibration_report((self.predict(anchors) if before is None else before).p, y, prefix="predictor/beta_")
        agg: dict[str, list[float]] = {}
        for k, v in zip(anchors.keys, y.tolist()):
            a = agg.get(k)
            if a is None:
                agg[k] = [v, 1.0 - v]
            else:
                a[0] += v
                a[1] += 1.0 - v
        now = self.clock
        for k, (s, f) in agg.items():
            old = self._ev.pop(k, None)
            if old is not None:
                # visits: one discount per observation; steps: one per elapsed step
                w = self.discount if self.decay_by == "visits" else self._weight(now - old[2])
                s, f = s + w * old[0], f + w * old[1]
            self._ev[k] = (s, f, now)
        while len(self._ev) > self.max_keys:
            self._ev.popitem(last=False)
        self.clock += 1
        metrics["predictor/beta_keys"] = float(len(self._ev))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        ev = np.asarray([e[:2] for e in self._ev.values()], dtype=np.float64).reshape(-1, 2)
        return {
            "alpha0": self.alpha0,
            "beta0": self.beta0,
            "discount": self.discount,
            "decay_by": self.decay_by,
            "clock": self.clock,
            "keys": list(self._ev.keys()),
            "ab": ev + np.array([self.alpha0, self.beta0]),  # posterior parameters as of each key's last update
            "updated_at": np.asarray([e[2] for e in self._ev.values()], dtype=np.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha0, self.beta0, self.discount = state["alpha0"], state["beta0"], state["discount"]
        self.decay_by = state.get("decay_by", "visits")  # states saved before decay_by existed
        self.clock = int(state.get("clock", 0))
        ab = np.asarray(state["ab"], dtype=np.float64).reshape(-1, 2)
        at = np.asarray(state.get("updated_at", np.full(len(ab), self.clock)), dtype=np.int64)
        self._ev = OrderedDict(
            (k, (float(a) - self.alpha0, float(b) - self.beta0, int(t))) for k, (a, b), t in zip(state["keys"], ab, at)
        )
