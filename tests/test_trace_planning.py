"""TRACE allocator and planner pieces changed for the allocation benchmark: tree-inherited prefix
priors, the release rule, per-event readiness and the budget invariant."""

from __future__ import annotations

import numpy as np
import pytest

from verl_trace.allocation import Budget, build_allocator, new_planner
from verl_trace.allocation.drive import drive
from verl_trace.allocation.trace import prefix_prior, tree_view
from verl_trace.config import AllocatorConfig, TraceConfig
from verl_trace.predictor import OraclePredictor
from verl_trace.tree import ROOT, RolloutTree


def _chain(tree: RolloutTree, parent: int, turns: int, reward: float, p: float) -> int:
    node = parent
    for _ in range(turns):
        node = tree.add_turn(node, [1, 2, 3], [9], meta={"true_p": p})
    tree.finish(node, reward)
    return node


def test_prefix_prior_inherits_the_prompts_evidence_without_double_counting() -> None:
    a, b = np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0])
    p = np.array([0.5, 0.5, 0.8])  # the predictor thinks anchor 2's turn helped
    s, f = np.array([0.0, 0.0, 0.0]), np.array([4.0, 1.0, 0.0])  # root: 0/4; anchor 1 saw one failure
    a2, b2 = prefix_prior(a, b, p, s, f, 0.0, 4.0)
    assert (a2[0], b2[0]) == (1.0, 1.0)  # the root keeps the predictor's prior
    # anchor 1: root evidence outside its subtree is 0/3 -> mean 1/5, concentration capped at 2
    assert a2[1] / (a2[1] + b2[1]) == pytest.approx(0.2)
    assert a2[1] + b2[1] == pytest.approx(2.0)
    # anchor 2: the same prompt evidence (0/4), shifted up by the predictor's logit difference
    base = 1 / 6
    expect = 1 / (1 + np.exp(-(np.log(base / (1 - base)) + np.log(0.8 / 0.2))))
    assert a2[2] / (a2[2] + b2[2]) == pytest.approx(expect)


def test_tree_view_counts_outcomes_and_anchors() -> None:
    tree = RolloutTree("t")
    leaf1 = _chain(tree, ROOT, 2, 1.0, 0.5)
    mid = tree.path(leaf1)[1]
    _chain(tree, mid, 1, 0.0, 0.5)
    _chain(tree, ROOT, 1, 0.0, 0.5)
    v = tree_view(tree, 0.5, max_turns=3)
    assert v.anchors == [ROOT, mid]
    assert (v.s[ROOT], v.f[ROOT], v.s[mid], v.f[mid]) == (1, 2, 1, 1)
    assert (v.hs[ROOT], v.hf[ROOT], v.hs[mid], v.hf[mid]) == (1, 2, 1, 1)
    assert v.cum[leaf1] == 6


def _sim_rollout(rng: np.random.Generator):
    """A toy environment: each turn moves p a little; the answer succeeds with probability p."""

    def rollout(tree: RolloutTree, launch) -> list[int]:
        out = []
        for _ in range(launch.count):
            node, p = launch.anchor, tree[launch.anchor].meta["true_p"]
            while tree[node].depth < 3:
                p = float(np.clip(p + rng.normal(0, 0.15), 0.01, 0.99))
                node = tree.add_turn(node, [1] * int(rng.integers(5, 50)), [2], meta={"true_p": p})
                if rng.random() < 0.4:
                    break
            tree.finish(node, float(rng.random() < p))
            out.append(node)
        return out

    return rollout


@pytest.mark.parametrize("release_gain", [0.05, 1.0])
@pytest.mark.parametrize("schedule,ready_fraction", [("pipelined", 1.0), ("pipelined", 0.5), ("rounds", 1.0)])
def test_trace_spends_exactly_the_budget(release_gain: float, schedule: str, ready_fraction: float) -> None:
    rng = np.random.default_rng(0)
    cfg = TraceConfig(allocator="oracle", schedule=schedule, ready_fraction=ready_fraction,
                      allocation=AllocatorConfig(pool_factor=2.0, release_gain=release_gain, rounds=2))
    pool = []
    for i in range(24):
        t = RolloutTree(f"u{i}")
        t.root.meta["true_p"] = float(rng.uniform(0.02, 0.98))
        pool.append(t)
    planner = new_planner(cfg, build_allocator(cfg), n_roots=12, budget=Budget(96), max_turns=3,
                          predictor=OraclePredictor(), rng=rng)
    drive(planner, pool, _sim_rollout(rng))
    assert planner.ctx.ledger.launched == 96 == sum(len(t.leaves()) for t in planner.ctx.trees.values())
    assert len(planner.ctx.trees) == 12


def test_release_gain_moves_leaves_from_settled_trees_to_mixed_ones() -> None:
    """With the price of a leaf at 1 (what it adds to an already mixed group), trees whose first
    chains all failed at a tiny p give their share to trees that are already mixed."""
    rng = np.random.default_rng(1)
    leaves = {}
    for gain in (0.05, 1.0):
        cfg = TraceConfig(allocator="oracle", schedule="rounds",
                          allocation=AllocatorConfig(release_gain=gain, rounds=1, initial_fraction=0.5))
        pool = []
        for i in range(8):
            t = RolloutTree(f"u{i}")
            t.root.meta["true_p"] = 0.5 if i < 4 else 0.01
            pool.append(t)
        planner = new_planner(cfg, build_allocator(cfg), n_roots=8, budget=Budget(64), max_turns=3,
                              predictor=OraclePredictor(), rng=rng)
        drive(planner, pool, _sim_rollout(np.random.default_rng(2)))
        leaves[gain] = sum(len(planner.ctx.trees[f"u{i}"].leaves()) for i in range(4))
    assert leaves[1.0] > leaves[0.05]


def test_pipelined_readiness_only_replans_the_reported_tree() -> None:
    cfg = TraceConfig(allocator="tree_random", allocation=AllocatorConfig(rounds=1, initial_fraction=0.5))
    pool = [RolloutTree(f"u{i}") for i in range(3)]
    planner = new_planner(cfg, build_allocator(cfg), n_roots=3, budget=Budget(12), max_turns=3)
    first = planner.start(pool)
    assert [(x.uid, x.count) for x in first] == [("u0", 2), ("u1", 2), ("u2", 2)]
    tree = planner.ctx.trees["u1"]
    done = [(first[1], _chain(tree, ROOT, 2, float(k), 0.5)) for k in range(2)]
    again = planner.leaves_done(done)
    assert again and {x.uid for x in again} == {"u1"}  # only u1's round completed
