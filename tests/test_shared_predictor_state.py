"""Regression: ``EnsemblePredictor.state_dict()`` is a snapshot. It used to return torch's live
Adam moment tensors, so training after ``state_dict()`` changed the "saved" state, and two
predictors restored from one state shared (and corrupted) each other's optimizer moments."""

from __future__ import annotations

import numpy as np

from verl_trace.predictor import AnchorBatch, EnsemblePredictor


def _batch(seed: int) -> tuple[AnchorBatch, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    return AnchorBatch(keys=[f"k{i}" for i in range(64)], features=x), (x[:, 0] > 0).astype(float)


def test_state_dict_is_a_snapshot_and_restores_exactly():
    a = EnsemblePredictor(members=3, hidden=8, steps_per_update=5, seed=1)
    a.update(*_batch(0))
    state = a.state_dict()
    b, c = EnsemblePredictor(members=3, hidden=8, steps_per_update=5), EnsemblePredictor(members=3, hidden=8, steps_per_update=5)
    b.load_state_dict(state)
    a.update(*_batch(1))  # training the original must not touch the snapshot...
    c.load_state_dict(state)
    probe, _ = _batch(2)
    assert np.array_equal(b.predict(probe).p, c.predict(probe).p)
    b.update(*_batch(1))  # ...and a restored copy continues exactly like the original did
    assert np.array_equal(a.predict(probe).p, b.predict(probe).p)
    c.update(*_batch(3))  # nor may two restored copies share optimizer tensors
    b2 = EnsemblePredictor(members=3, hidden=8, steps_per_update=5)
    b2.load_state_dict(state)
    b2.update(*_batch(1))
    assert np.array_equal(b.predict(probe).p, b2.predict(probe).p)
