"""TRACE allocator and planner pieces changed for the allocation benchmark: tree-inherited prefix
priors, the release rule, per-event readiness and the budget invariant."""

from __future__ import annotations

import numpy as np
import pytest

from verl_trace.allocation import Budget, build_allocator, new_planner
from verl_trace.allocation.drive import drive
from verl_trace.allocation.trace import tree_view
from verl_trace.config import AllocatorConfig, TraceConfig
from verl_trace.predictor import OraclePredictor, Prediction
from verl_trace.tree import ROOT, RolloutTree


def _chain(tree: RolloutTree, parent: int, turns: int, reward: float, p: float) -> int:
    node = parent
    for _ in range(turns):
        node = tree.add_turn(node, [1, 2, 3], [9], meta={"true_p": p})
    tree.finish(node, reward)
    return node


def prefix_prior(
    a: np.ndarray, b: np.ndarray, p: np.ndarray, s: np.ndarray, f: np.ndarray, s_root: float, f_root: float
) -> tuple[np.ndarray, np.ndarray]:
    """Reference (numpy) form of the tree-inherited priors that ``TraceAllocator._plan`` computes
    in scalar Python. Beta priors for a tree's anchors (row 0 is the root) that inherit the prompt's evidence.

    A prefix's success probability is its prompt's, moved by the turns taken (the conditional
    success probability is a martingale down the tree). So a prefix's prior mean is the root's
    posterior mean from the leaves *outside* the prefix's subtree (no double counting: its own
    leaves are added by the caller), shifted in logit space by what the predictor says the turns
    changed (logit p_v - logit p_root). A prompt whose chains all failed thereby makes its prefixes
    look hard too, which the predictor alone (features only) cannot know. The concentration is the
    predictor's, capped by the root's (a prefix is never surer than its prompt's evidence).
    """
    a, b = np.array(a, np.float64), np.array(b, np.float64)
    if a.size < 2:
        return a, b
    out_a = a[0] + s_root - s[1:]
    out_b = b[0] + f_root - f[1:]
    pc = np.minimum(np.maximum(p, 1e-6), 1 - 1e-6)
    odds = (out_a / out_b) * (pc[1:] / (1 - pc[1:])) * ((1 - pc[0]) / pc[0])  # logits add: odds multiply
    mean = odds / (1.0 + odds)
    kappa = np.minimum(a[1:] + b[1:], out_a + out_b)
    a[1:], b[1:] = kappa * mean, kappa * (1 - mean)
    return a, b




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


def test_plan_matches_the_numpy_reference_of_its_priors() -> None:
    """``TraceAllocator._plan`` (scalar Python, the hot path) gives every anchor the posterior the
    numpy reference gives: beta_params of the prediction, inherited from the prompt, plus the
    outcomes below it."""
    rng = np.random.default_rng(5)
    cfg = TraceConfig(allocator="trace")
    alloc = build_allocator(cfg)
    for trial in range(30):
        tree = RolloutTree(f"t{trial}")
        tree.root.meta["true_p"] = float(rng.uniform(0.05, 0.95))
        for _ in range(int(rng.integers(2, 6))):
            _chain(tree, ROOT, int(rng.integers(1, 4)), float(rng.random() < 0.5), 0.5)
        nodes = [n.node_id for n in tree.nodes if not n.terminal and n.depth >= 1]
        for _ in range(int(rng.integers(0, 4))):
            if nodes:
                _chain(tree, int(rng.choice(nodes)), 1, float(rng.random() < 0.5), 0.5)
        view = tree_view(tree, 0.5, max_turns=4)
        n = len(view.anchors)
        p, sd = rng.uniform(0.01, 0.99, n), rng.uniform(0.0, 0.3, n)
        plan = alloc._plan(new_planner(cfg, alloc, n_roots=1, budget=Budget(8), max_turns=4,
                                       predictor=OraclePredictor()).ctx, tree, view, (p.tolist(), sd.tolist()))
        s = np.array([view.s[i] for i in view.anchors], float)
        f = np.array([view.f[i] for i in view.anchors], float)
        a0, b0 = prefix_prior(*Prediction(p, sd).beta_params(kappa_max=alloc.kappa_max), p, s, f, view.s[ROOT], view.f[ROOT])
        np.testing.assert_allclose(plan.a, a0 + s, rtol=1e-12)
        np.testing.assert_allclose(plan.b, b0 + f, rtol=1e-12)


@pytest.mark.parametrize("mixed_weight, leaf_exponent", [(0.0, 1.0), (8.0, 1.0), (0.0, 0.5), (2.0, 0.5)])
def test_objective_family_gains_match_their_closed_form(mixed_weight: float, leaf_exponent: float) -> None:
    """A tree of n leaves is worth P(mixed) * (mixed_weight + n ** leaf_exponent) (docs/algorithm.md
    §4.2): in a group that is already mixed one more leaf adds the size term's increment (1 under
    the original rule) wherever it goes; in an all-fail group it adds the whole value times the
    chance that the new leaf succeeds."""
    from verl_trace.allocation.trace import _TreePlan

    w, g = mixed_weight, leaf_exponent
    a, b = [2.0, 1.0], [3.0, 4.0]
    mixed = _TreePlan("t", [0, 1], a, b, [0.0, 0.0], [1.0, 1.0], s_root=1, f_root=3, mixed_weight=w, leaf_exponent=g)
    step = 5**g - 4**g
    assert mixed.gains() == pytest.approx([step, step]) and mixed.price() == pytest.approx(step)
    failed = _TreePlan("t", [0, 1], a, b, [0.0, 0.0], [1.0, 1.0], s_root=0, f_root=4, mixed_weight=w, leaf_exponent=g)
    assert failed.gains() == pytest.approx([(w + 5**g) * ai / (ai + bi) for ai, bi in zip(a, b)])
    failed.place(0)  # a second draw at the same anchor is less likely to break the run of failures
    p0, p1 = 2 / 5, (2 + 0) / (5 + 1)
    assert failed.gains()[0] == pytest.approx((w + 6**g) * (1 - (1 - p0) * (1 - p1)) - (w + 5**g) * p0)
