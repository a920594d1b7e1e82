"""Layer 2: success-probability predictors for anchors, and their featurizers."""

from __future__ import annotations

from ..config import PredictorConfig
from .base import AnchorBatch, Prediction, Predictor
from .beta import BetaPredictor
from .calibration import auc, brier, calibration_report, ece
from .featurize import AnchorFeaturizer, HashedNgramEncoder, SentenceEmbeddingEncoder
from .hybrid import HybridPredictor, OraclePredictor
from .shared import EnsemblePredictor


def build_predictor(cfg: PredictorConfig, oracle: bool = False) -> Predictor:
    if oracle:
        return OraclePredictor()
    beta = BetaPredictor(alpha0=cfg.alpha0, beta0=cfg.beta0, discount=cfg.discount, decay_by=cfg.decay_by)
    if cfg.kind == "beta":
        return beta
    shared = EnsemblePredictor(
        members=cfg.members,
        hidden=cfg.hidden,
        lr=cfg.lr,
        steps_per_update=cfg.steps_per_update,
        buffer_size=cfg.buffer_size,
        replay_discount=cfg.replay_discount,
        seed=cfg.seed,
    )
    return shared if cfg.kind == "shared" else HybridPredictor(shared, beta, kappa_max=cfg.kappa_max)


def build_featurizer(cfg: PredictorConfig, max_turns: int) -> AnchorFeaturizer:
    if cfg.featurizer == "embedding":
        return AnchorFeaturizer(SentenceEmbeddingEncoder(cfg.model_path), max_turns=max_turns)
    return AnchorFeaturizer(HashedNgramEncoder(cfg.feature_dim), max_turns=max_turns)


__all__ = [
    "AnchorBatch",
    "AnchorFeaturizer",
    "BetaPredictor",
    "EnsemblePredictor",
    "HashedNgramEncoder",
    "HybridPredictor",
    "OraclePredictor",
    "Prediction",
    "Predictor",
    "SentenceEmbeddingEncoder",
    "auc",
    "brier",
    "build_featurizer",
    "build_predictor",
    "calibration_report",
    "ece",
]
