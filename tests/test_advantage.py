import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_trace.advantage import (
    LeafRecord,
    compute_trace_advantage,
    compute_tree_grpo_advantage,
    group_turn_advantages,
    node_values,
    tree_grpo_leaf_advantages,
    tree_turn_advantages,
)
from verl_trace.allocation import Budget, build_allocator, new_planner
from verl_trace.allocation.drive import drive
from verl_trace.config import AdvantageConfig, TraceConfig
from verl_trace.predictor import build_predictor
from verl_trace.tree import ROOT, LeafStatus, RolloutTree

SIGMA = math.sqrt(1 / 3)  # sample std of rewards (1, 0, 0, 1)


def worked_example() -> tuple[RolloutTree, dict[str, int]]:
    """The tree of docs/algorithm.md: root -> a -> {b: 1, c -> d: 0}; root -> e: 0; root -> g: 1."""
    t = RolloutTree("ex", [1])
    ids = {}
    ids["a"] = t.add_turn(ROOT, [11, 12], [90])
    ids["b"] = t.add_turn(ids["a"], [13])
    ids["c"] = t.add_turn(ids["a"], [14], [91, 92])
    ids["d"] = t.add_turn(ids["c"], [15, 16])
    ids["e"] = t.add_turn(ROOT, [17])
    ids["g"] = t.add_turn(ROOT, [18, 19, 20])
    for name, r in [("b", 1.0), ("d", 0.0), ("e", 0.0), ("g", 1.0)]:
        t.finish(ids[name], r)
    return t, ids


def test_worked_example_by_hand():
    t, ids = worked_example()
    adv = tree_turn_advantages(t, AdvantageConfig(epsilon=0.0))
    # V(a)=0.5, V(c)=0, V(root)=mean(0.5, 0, 1)=0.5; the branch at a adds +-0.5 to later turns.
    np.testing.assert_allclose(adv[ids["b"]], np.array([0.0, 1.0]) / SIGMA)
    np.testing.assert_allclose(adv[ids["d"]], np.array([0.0, -1.0, -1.0]) / SIGMA)
    np.testing.assert_allclose(adv[ids["e"]], np.array([-0.5]) / SIGMA)
    np.testing.assert_allclose(adv[ids["g"]], np.array([0.5]) / SIGMA)
    no_local = tree_turn_advantages(t, AdvantageConfig(epsilon=0.0, local_weight=0.0))
    np.testing.assert_allclose(no_local[ids["d"]], np.array([0.0, -0.5, -0.5]) / SIGMA)
    raw = tree_turn_advantages(t, AdvantageConfig(epsilon=0.0), norm_by_std=False)
    np.testing.assert_allclose(raw[ids["b"]], [0.0, 1.0])


def test_child_mean_vs_leaf_mean_under_uneven_expansion():
    # root -> x (three leaves 1, 1, 1 below a branch) and root -> y (one leaf 0).
    t = RolloutTree("u")
    x = t.add_turn(ROOT, [1], [2])
    for _ in range(3):
        t.finish(t.add_turn(x, [3]), 1.0)
    y = t.add_turn(ROOT, [4])
    t.finish(y, 0.0)
    child = tree_turn_advantages(t, AdvantageConfig(epsilon=0.0), norm_by_std=False)
    leaf = tree_turn_advantages(t, AdvantageConfig(epsilon=0.0, value="leaf_mean"), norm_by_std=False)
    # child_mean: V(root) = (1 + 0) / 2; leaf_mean: V(root) = 3/4, pulled toward the expanded child.
    assert child[y][0] == pytest.approx(-0.5)
    assert leaf[y][0] == pytest.approx(-0.75)


def _rows(t: RolloutTree):
    leaves = t.leaves()
    trajs = [t.render(n.node_id) for n in leaves]
    length = max(len(x.response_ids) for x in trajs) + 2  # right padding
    mask = torch.zeros(len(trajs), length)
    rewards = torch.zeros(len(trajs), length)
    for i, tr in enumerate(trajs):
        mask[i, : len(tr.response_mask)] = torch.tensor(tr.response_mask, dtype=torch.float32)
        rewards[i, len(tr.response_ids) - 1] = tr.reward
    return leaves, trajs, mask, rewards


def test_verl_adapter_credits_turn_spans_and_masks_observations():
    t, ids = worked_example()
    leaves, trajs, mask, rewards = _rows(t)
    adv, ret = compute_trace_advantage(
        rewards, mask, index=np.array(["ex"] * len(leaves), dtype=object),
        tree_paths=[tr.path for tr in trajs], turn_spans=[tr.turn_spans for tr in trajs],
        leaf_status=[tr.status.value for tr in trajs], trace_config={"epsilon": 0.0},
    )
    per_turn = tree_turn_advantages(t, AdvantageConfig(epsilon=0.0))
    for i, (leaf, tr) in enumerate(zip(leaves, trajs)):
        for (s, e), a in zip(tr.turn_spans, per_turn[leaf.node_id]):
            for k in range(s, e):
                expected = a if tr.response_mask[k] else 0.0
                assert adv[i, k].item() == pytest.approx(expected, abs=1e-6)
        assert torch.all(adv[i, len(tr.response_ids):] == 0)
    assert torch.equal(adv, ret)


def test_without_tree_metadata_trace_equals_verl_grpo():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    gen = torch.Generator().manual_seed(0)
    bsz, length = 24, 7
    index = np.array([f"p{i // 4}" for i in range(bsz)], dtype=object)
    scores = torch.randint(0, 2, (bsz,), generator=gen).float()
    scores[:4] = 1.0  # one all-equal group
    mask = (torch.rand(bsz, length, generator=gen) > 0.2).float()
    mask[:, 0] = 1
    rewards = torch.zeros(bsz, length)
    rewards[:, -1] = scores
    ours, _ = compute_trace_advantage(rewards, mask, index=index)
    theirs, _ = compute_grpo_outcome_advantage(rewards, mask, index=index)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)
    assert torch.all(ours[:4] == 0)


def test_zero_cases_never_nan():
    mask = torch.ones(3, 4)
    rewards = torch.zeros(3, 4)
    rewards[:, -1] = torch.tensor([1.0, 1.0, 1.0])
    adv, _ = compute_trace_advantage(rewards, mask, index=np.array(["a", "a", "a"], dtype=object))
    assert torch.all(adv == 0)  # all-equal group: exactly zero
    adv, _ = compute_trace_advantage(rewards[:1], mask[:1], index=np.array(["b"], dtype=object))
    assert torch.all(adv == 0)  # a group of one has no contrast
    pad = torch.zeros(2, 4)
    adv, _ = compute_trace_advantage(rewards[:2] * 0, pad, index=np.array(["pad1", "pad1"], dtype=object))
    assert torch.all(adv == 0)  # verl's padding rows: a uid of their own, reward 0, zero mask


@pytest.mark.parametrize("estimator", [compute_trace_advantage, compute_tree_grpo_advantage])
def test_a_leaf_without_generated_tokens_still_counts(estimator):
    """docs/algorithm.md §5: three leaves under one root, rewards 1, 0, 0, and the rewarded leaf
    generated no tokens (all-zero mask). It still enters the values and sigma: the two 0-reward
    leaves get (0 - 1/3) / sqrt(1/3) = -0.577 on every token; its own tokens are masked."""
    mask = torch.ones(3, 4)
    mask[0] = 0
    rewards = torch.zeros(3, 4)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 0.0])
    adv, _ = estimator(rewards, mask, index=np.array(["t"] * 3, dtype=object),
                       tree_paths=[[0, 1], [0, 2], [0, 3]], turn_spans=[[[0, 4]]] * 3,
                       leaf_status=["ok"] * 3, trace_config={"epsilon": 0.0})
    expected = torch.tensor([[0.0] * 4, [-1 / math.sqrt(3)] * 4, [-1 / math.sqrt(3)] * 4])
    torch.testing.assert_close(adv, expected)


def test_failed_and_truncated_leaves():
    recs = [
        LeafRecord((0, 1), 1.0),
        LeafRecord((0, 2), 0.0),
        LeafRecord((0, 3), 0.0, LeafStatus.FAILED),
        LeafRecord((0, 4), 0.0, LeafStatus.TRUNCATED),
    ]
    keep = group_turn_advantages(recs, AdvantageConfig(epsilon=0.0), norm_by_std=False)
    assert keep[2].tolist() == [0.0]  # failed: no outcome, no advantage
    assert keep[3][0] == pytest.approx(-1 / 3)  # truncated counts as a failure by default
    drop = group_turn_advantages(recs, AdvantageConfig(epsilon=0.0, truncated="drop"), norm_by_std=False)
    assert drop[3].tolist() == [0.0]
    assert drop[0][0] == pytest.approx(0.5)


def test_tree_grpo_sums_inter_and_intra_tree_zscores():
    t, ids = worked_example()
    leaves = t.leaves()
    recs = [LeafRecord(tuple(t.path(n.node_id)), n.reward) for n in leaves]
    got = dict(zip([n.node_id for n in leaves], tree_grpo_leaf_advantages(recs, AdvantageConfig(epsilon=0.0))))
    # Inter-tree: z over (1, 0, 0, 1). Intra-tree: only subtree a has two leaves (1 vs 0): z = +-1/sqrt(0.5).
    assert got[ids["b"]] == pytest.approx(0.5 / SIGMA + 0.5 / math.sqrt(0.5))
    assert got[ids["d"]] == pytest.approx(-0.5 / SIGMA - 0.5 / math.sqrt(0.5))
    assert got[ids["e"]] == pytest.approx(-0.5 / SIGMA)
    leaves_, trajs, mask, rewards = _rows(t)
    adv, _ = compute_tree_grpo_advantage(rewards, mask, index=np.array(["ex"] * 4, dtype=object),
                                         tree_paths=[tr.path for tr in trajs], trace_config={"epsilon": 0.0})
    for i, leaf in enumerate(leaves_):
        nz = adv[i][mask[i] > 0]
        assert torch.allclose(nz, torch.full_like(nz, got[leaf.node_id]), atol=1e-5)


def test_mismatched_spans_are_rejected():
    t, _ = worked_example()
    _, trajs, mask, rewards = _rows(t)
    with pytest.raises(ValueError, match="turn spans"):
        compute_trace_advantage(rewards, mask, index=np.array(["ex"] * 4, dtype=object),
                                tree_paths=[tr.path for tr in trajs], turn_spans=[tr.turn_spans[:1] for tr in trajs])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), allocator=st.sampled_from(["tree_random", "trace", "uniform"]),
       value=st.sampled_from(["child_mean", "leaf_mean"]), constant=st.booleans())
def test_properties_on_random_trees(make_world, seed, allocator, value, constant):
    world = make_world(seed=seed, max_turns=4, stop_prob=0.35)
    cfg = TraceConfig(allocator=allocator)
    pl = new_planner(cfg, build_allocator(cfg), n_roots=3, budget=Budget(3 * 6), max_turns=4,
                     predictor=build_predictor(cfg.predictor) if allocator == "trace" else None)
    drive(pl, world.pool(3), world.rollout)
    adv_cfg = AdvantageConfig(value=value)
    for tree in pl.ctx.trees.values():
        if constant:
            for leaf in tree.leaves():
                leaf.reward = 1.0
        adv = tree_turn_advantages(tree, adv_cfg)
        assert all(np.all(np.isfinite(a)) for a in adv.values())
        if constant:
            assert all(np.all(a == 0) for a in adv.values())
            continue
        # Root-level contrast is zero-sum: over the root's children (child_mean) or leaves (leaf_mean).
        first = {}
        for leaf in tree.leaves():
            first.setdefault(tree.path(leaf.node_id)[1], []).append(adv[leaf.node_id][0])
        if value == "child_mean":
            assert sum(v[0] for v in first.values()) == pytest.approx(0.0, abs=1e-6)
            # Prefix-level contrast is zero-sum over the children of every branch point.
            usable = [n for n in tree.leaves() if n.status is not LeafStatus.FAILED]
            children = {}
            for leaf in usable:
                path = tree.path(leaf.node_id)
                for a, b in zip(path[:-1], path[1:]):
                    children.setdefault(a, set()).add(b)
            values = node_values(ROOT, {k: sorted(v) for k, v in children.items()},
                                 {n.node_id: [n.reward] for n in usable}, "child_mean")
            for v, kids in children.items():
                assert sum(values[c] - values[v] for c in kids) == pytest.approx(0.0, abs=1e-9)
        else:
            assert sum(sum(v) for v in first.values()) == pytest.approx(0.0, abs=1e-6)
