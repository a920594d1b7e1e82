import json

import numpy as np
import pytest

from verl_trace.tree import ROOT, LeafStatus, RolloutTree, load_trees, save_trees


def _branched_tree() -> RolloutTree:
    """root -> a (obs) -> {b (leaf, 1.0), c (obs) -> d (leaf, 0.0)}; root -> e (leaf, 0.0)."""
    t = RolloutTree("t", prompt_ids=[100, 101], prompt_text="q?")
    a = t.add_turn(ROOT, [1, 2, 3], [90, 91], action_logprobs=[-0.1, -0.2, -0.3], text="search x", tool_calls=1)
    b = t.add_turn(a, [4, 5], [], action_logprobs=[-0.5, -0.6], text="answer")
    t.finish(b, 1.0)
    c = t.add_turn(a, [6], [92, 93, 94], action_logprobs=[-0.7], text="search y", tool_calls=1, tool_errors=1)
    d = t.add_turn(c, [7, 8], [], action_logprobs=[-0.8, -0.9], text="answer")
    t.finish(d, 0.0)
    e = t.add_turn(ROOT, [9], [], action_logprobs=[-1.0], text="answer")
    t.finish(e, 0.0, LeafStatus.TRUNCATED)
    return t


def test_render_reproduces_shared_prefix_and_masks_observations():
    t = _branched_tree()
    b, d = 2, 4
    tb, td = t.render(b), t.render(d)
    assert tb.prompt_ids == td.prompt_ids == [100, 101]
    assert tb.response_ids == [1, 2, 3, 90, 91, 4, 5]
    assert tb.response_mask == [1, 1, 1, 0, 0, 1, 1]
    assert tb.response_logprobs == [-0.1, -0.2, -0.3, 0.0, 0.0, -0.5, -0.6]
    assert td.response_ids == [1, 2, 3, 90, 91, 6, 92, 93, 94, 7, 8]
    assert td.response_mask == [1, 1, 1, 0, 0, 1, 0, 0, 0, 1, 1]
    # The shared prefix (turn a) renders identically on both leaves.
    n = 5
    assert tb.response_ids[:n] == td.response_ids[:n]
    assert tb.response_mask[:n] == td.response_mask[:n]
    assert tb.response_logprobs[:n] == td.response_logprobs[:n]
    assert td.turn_spans == [(0, 5), (5, 9), (9, 11)]
    assert td.path == [0, 1, 3, 4]
    assert td.reward == 0.0 and td.status is LeafStatus.OK


def test_render_truncates_to_response_length():
    t = _branched_tree()
    tr = t.render(4, max_response_len=6)
    assert tr.response_ids == [1, 2, 3, 90, 91, 6]
    assert tr.response_mask == [1, 1, 1, 0, 0, 1]
    assert tr.turn_spans == [(0, 5), (5, 6), (6, 6)]  # one span per turn on the path
    assert len(tr.turn_spans) == len(tr.path) - 1


def test_counts_tokens_and_outcomes():
    t = _branched_tree()
    assert t.generated_tokens() == 3 + 2 + 1 + 2 + 1
    # As independent trajectories the prefix "a" (3 tokens) would be generated twice.
    assert t.unshared_generated_tokens() == (3 + 2) + (3 + 1 + 2) + 1
    assert t.outcome_counts(ROOT) == (1, 2)
    assert t.outcome_counts(1) == (1, 1)
    s, f = t.subtree_outcomes()
    for node in t.nodes:  # vectorized pass equals the naive definition
        leaves = t.leaves_under(node.node_id)
        assert s[node.node_id] == sum(1 for x in leaves if x.reward >= 0.5)
        assert f[node.node_id] == sum(1 for x in leaves if x.reward < 0.5)
    assert [n.node_id for n in t.branch_points()] == [0, 1]
    assert [n.node_id for n in t.anchors()] == [0, 1, 3]
    assert [n.node_id for n in t.anchors(max_depth=1)] == [0]
    assert t[3].stats.mean_logprob == pytest.approx(-0.7)
    assert t[3].stats.uncertainty == pytest.approx(0.7)


def test_failed_leaves_have_no_outcome():
    t = RolloutTree("t")
    a = t.add_turn(ROOT, [], [])
    t.finish(a, None, LeafStatus.FAILED)
    b = t.add_turn(ROOT, [1], [])
    t.finish(b, 1.0)
    assert t.outcome_counts(ROOT) == (1, 0)
    assert t.columns()["leaf"].tolist() == [0, 2, 1]


def test_serialization_round_trip():
    t = _branched_tree()
    t[1].meta["p_hat"] = np.float64(0.25)
    t[1].features = np.array([1.0, 2.0], np.float32)
    data = json.loads(json.dumps(t.to_dict(with_features=True)))
    u = RolloutTree.from_dict(data)
    assert u.to_dict(with_features=True) == data
    for leaf in t.leaves():
        assert u.render(leaf.node_id) == t.render(leaf.node_id)
    assert u[1].meta["p_hat"] == 0.25
    np.testing.assert_array_equal(u[1].features, [1.0, 2.0])


def test_saved_trees_load_back(tmp_path):
    """``trace.tree_dump_dir``'s files: a step's trees as one JSON list, written atomically."""
    t, u = _branched_tree(), RolloutTree("u", [7], "other?")
    t[1].meta["p_hat"] = 0.4
    path = save_trees([t, u], tmp_path / "steps" / "step_3-ab.json")
    assert [p.name for p in path.parent.iterdir()] == ["step_3-ab.json"]  # no temporary file left
    loaded = load_trees(path)
    assert [x.to_dict() for x in loaded] == [t.to_dict(), u.to_dict()]
    assert loaded[0][1].meta["p_hat"] == 0.4 and loaded[0].leaves()[0].reward == 1.0


@pytest.mark.parametrize(
    "action,match",
    [
        (lambda t: t.finish(ROOT, 1.0), "root cannot be a leaf"),
        (lambda t: t.add_turn(2, [1]), "cannot be extended"),
        (lambda t: t.add_turn(ROOT, [1, 2], action_logprobs=[0.0]), "action_logprobs has 1"),
        (lambda t: t.finish(t.add_turn(ROOT, [1]), float("nan")), "finite reward"),
        (lambda t: t.finish(1, 1.0), "already has children"),
        (lambda t: t.finish(2, 1.0), "already a leaf"),
        (lambda t: t.render(1), "not a leaf"),
        (lambda t: t.add_turn(99, [1]), "no node 99"),
    ],
)
def test_bad_operations_fail_clearly(action, match):
    with pytest.raises((ValueError, KeyError), match=match):
        action(_branched_tree())


def test_from_dict_rejects_gaps():
    data = _branched_tree().to_dict()
    data["nodes"][2]["id"] = 17
    with pytest.raises(ValueError, match="contiguous"):
        RolloutTree.from_dict(data)
