"""Layer 2 interface: predict the conditional success probability of anchors (roots or turn
prefixes) and learn it online from the terminal rewards of the leaves below them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class AnchorBatch:
    """A batch of anchors as a predictor sees them.

    ``keys`` identify an anchor across steps (a prompt's key repeats every epoch; a prefix key
    rarely does). ``features`` describe the prefix history for predictors that generalize.
    ``true_p`` exists only in the simulator and is read only by the oracle. ``weight`` (training
    batches only) is how much each (anchor, outcome) row counts in the shared model's loss
    (``predictor.example_weight``); per-key evidence always counts every outcome.
    """

    keys: Sequence[str]
    features: np.ndarray | None = None
    true_p: np.ndarray | None = None
    weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.keys)
        if self.features is not None:
            self.features = np.asarray(self.features, dtype=np.float32)
            if self.features.ndim != 2 or self.features.shape[0] != n:
                raise ValueError(f"features must have shape ({n}, d), got {self.features.shape}")
        if self.true_p is not None:
            self.true_p = np.asarray(self.true_p, dtype=np.float64)
            if self.true_p.shape != (n,):
                raise ValueError(f"true_p must have shape ({n},), got {self.true_p.shape}")
        if self.weight is not None:
            self.weight = np.asarray(self.weight, dtype=np.float64)
            if self.weight.shape != (n,) or not np.all(np.isfinite(self.weight)) or self.weight.min(initial=0.0) < 0:
                raise ValueError(f"weight must be finite, non-negative and of shape ({n},)")

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, idx: np.ndarray | Sequence[int]) -> AnchorBatch:
        idx = np.asarray(idx, dtype=np.int64)
        keys = self.keys
        return AnchorBatch(
            keys=[keys[i] for i in idx.tolist()],  # Python ints index a list faster than numpy scalars
            features=None if self.features is None else self.features[idx],
            true_p=None if self.true_p is None else self.true_p[idx],
            weight=None if self.weight is None else self.weight[idx],
        )


@dataclass
class Prediction:
    """Success probability and its epistemic uncertainty (standard deviation) per anchor."""

    p: np.ndarray
    std: np.ndarray

    def beta_params(self, kappa_min: float = 1.0, kappa_max: float = 64.0) -> tuple[np.ndarray, np.ndarray]:
        """Moment-matched Beta(a, b) with mean ``p`` and sd ``std``; the concentration is clipped so
        an over-confident predictor still lets observed outcomes move the posterior."""
        # np.minimum/np.maximum rather than np.clip: the planner calls this on a few anchors at a
        # time, where np.clip's overhead dominates.
        p = np.minimum(np.maximum(self.p, 1e-4), 1 - 1e-4)
        var = np.maximum(self.std, 1e-6) ** 2
        kappa = np.minimum(np.maximum(p * (1 - p) / var - 1.0, kappa_min), kappa_max)
        return kappa * p, kappa * (1 - p)


class Predictor(ABC):
    """predict / update / state_dict: the whole contract the allocators and the trainer rely on."""

    name: str = "predictor"

    @abstractmethod
    def predict(self, anchors: AnchorBatch) -> Prediction: ...

    @abstractmethod
    def update(self, anchors: AnchorBatch, outcomes: np.ndarray) -> dict[str, float]:
        """Learn from outcomes in [0, 1] (one per anchor). Returns metrics, including calibration
        of the predictions made *before* this update on exactly these anchors. An empty batch (a
        step whose leaves all failed) is a no-op that returns ``{}``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_outcomes(anchors: AnchorBatch, outcomes: np.ndarray) -> np.ndarray:
    y = np.asarray(outcomes, dtype=np.float64)
    if y.shape != (len(anchors),):
        raise ValueError(f"outcomes must have shape ({len(anchors)},), got {y.shape}")
    if not np.all(np.isfinite(y)) or y.min(initial=0.0) < 0.0 or y.max(initial=0.0) > 1.0:
        raise ValueError("outcomes must be finite and in [0, 1] (rewards are clipped before update)")
    return y
