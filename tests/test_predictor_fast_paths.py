"""Predictor pieces changed for speed or calibration: numpy inference, tie-aware AUC, the
empirical-Bayes concentration of the hybrid prior, and its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl_trace.predictor import AnchorBatch, BetaPredictor, EnsemblePredictor, HybridPredictor, auc
from verl_trace.predictor.hybrid import fit_concentration, group_by_key


def _batch(n: int, rng: np.random.Generator) -> tuple[AnchorBatch, np.ndarray]:
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(float)
    return AnchorBatch(keys=[f"k{i % (n // 4)}" for i in range(n)], features=x), y


def test_numpy_inference_matches_the_torch_model() -> None:
    rng = np.random.default_rng(0)
    b, y = _batch(400, rng)
    e = EnsemblePredictor(members=3, hidden=8, steps_per_update=5, seed=0)
    e.update(b, y)
    with torch.no_grad():
        ref = torch.sigmoid(e._logits(e._norm(b.features))).double().numpy()
    got = e.predict(b)
    assert np.allclose(got.p, ref.mean(0), atol=1e-6) and np.allclose(got.std, ref.std(0), atol=1e-6)
    e.update(b, y)  # weights change: the numpy copy must follow
    with torch.no_grad():
        ref = torch.sigmoid(e._logits(e._norm(b.features))).double().numpy()
    assert np.allclose(e.predict(b).p, ref.mean(0), atol=1e-6)


def test_auc_with_ties_matches_pairwise_counting() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = rng.integers(0, 4, 30) / 3
        y = rng.integers(0, 2, 30).astype(float)
        if y.min() == y.max():
            continue
        pos, neg = p[y == 1], p[y == 0]
        pairs = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
        assert auc(p, y) == pytest.approx(pairs / (pos.size * neg.size))


def test_fit_concentration_recovers_the_beta_binomial_dispersion() -> None:
    rng = np.random.default_rng(2)
    m = rng.uniform(0.2, 0.8, 4000)
    for kappa in (2.0, 20.0):
        p = rng.beta(kappa * m, kappa * (1 - m))
        n = np.full(m.size, 8.0)
        s = rng.binomial(8, p).astype(float)
        fit = fit_concentration(m, s, n, kappa_max=64.0)
        assert fit == pytest.approx(kappa, rel=0.25)
    assert fit_concentration(m, s, np.ones_like(n), kappa_max=64.0) is None  # no group of two


def test_group_by_key() -> None:
    m, s, n = group_by_key(["a", "b", "a", "a"], np.array([1.0, 0.0, 0.0, 1.0]), np.array([0.3, 0.6, 0.3, 0.3]))
    assert m.tolist() == [0.3, 0.6] and s.tolist() == [2.0, 0.0] and n.tolist() == [3.0, 1.0]


def test_hybrid_fits_kappa_and_checkpoints_it() -> None:
    rng = np.random.default_rng(3)
    h = HybridPredictor(EnsemblePredictor(members=2, hidden=8, steps_per_update=5), BetaPredictor(), kappa_max=64.0)
    for _ in range(3):
        b, y = _batch(400, rng)
        metrics = h.update(b, y)
    assert h.kappa_fit is not None and 0.5 <= h.kappa_fit <= 64.0
    assert metrics["predictor/hybrid_kappa"] == h.kappa_fit
    h2 = HybridPredictor(EnsemblePredictor(members=2, hidden=8), BetaPredictor())
    h2.load_state_dict(h.state_dict())
    b, _ = _batch(40, rng)
    assert h2.kappa_fit == h.kappa_fit
    assert np.allclose(h2.predict(b).p, h.predict(b).p)
