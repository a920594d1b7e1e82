"""The simulator's ground truth: the success probability it reports is the expected reward."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.sim.env import Environment, MartingaleWalk, PromptSet, sigmoid
from benchmarks.sim.regime import parse_regime
from verl_trace.tree import ROOT

REGIME = {"name": "t", "difficulty": {"components": [{"weight": 1.0, "mean": 0.0, "std": 1.5}]},
          "run": {"train_prompts": 20, "eval_prompts": 4, "batch_prompts": 4, "pool_factor": 1.0}}


def test_logit_walk_is_a_martingale() -> None:
    walk = MartingaleWalk(0.8)
    rng = np.random.default_rng(0)
    for u in (-3.0, 0.0, 2.5):
        draws = u + walk.correction(u) + 0.8 * rng.standard_normal(400_000)
        assert sigmoid_mean(draws) == pytest.approx(sigmoid(u), abs=2e-3)


def sigmoid_mean(u: np.ndarray) -> float:
    return float(np.mean(1.0 / (1.0 + np.exp(-u))))


def test_true_p_of_a_prefix_is_its_expected_reward() -> None:
    regime = parse_regime(REGIME)
    env = Environment(regime, PromptSet(regime, 0), seed=1)
    tree = env.root(0, 0, "u")
    p0 = tree.root.meta["true_p"]
    rewards = [env.continuation("u", ROOT)[-1].reward for _ in range(6000)]
    assert np.mean(rewards) == pytest.approx(p0, abs=0.02)
    # A prefix's continuations succeed at that prefix's true_p, whatever happened before it.
    leaf = env.materialize(tree, ROOT, env.continuation("u", ROOT))
    inner = [i for i in tree.path(leaf)[1:-1]]
    if inner:
        v = inner[-1]
        r = [env.continuation("u", v)[-1].reward for _ in range(6000)]
        assert np.mean(r) == pytest.approx(tree[v].meta["true_p"], abs=0.02)


def test_features_never_contain_the_probability() -> None:
    regime = parse_regime(REGIME)
    env = Environment(regime, PromptSet(regime, 0), seed=1)
    tree = env.root(3, 0, "u")
    for _ in range(4):
        env.materialize(tree, ROOT, env.continuation("u", ROOT))
    for node in tree.nodes:
        assert node.features.shape == (env.feature_dim,)
        assert not np.any(np.isclose(node.features, node.meta["true_p"], atol=1e-9))
