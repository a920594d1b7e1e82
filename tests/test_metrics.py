import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_trace.metrics import effective_leaves, forest_metrics, informative_comparisons, merge_step_metrics
from verl_trace.tree import ROOT, LeafStatus, RolloutTree


def _example() -> RolloutTree:
    """root -> a -> {b: 1, c -> d: 0}; root -> e: 0; root -> g: 1 (docs/algorithm.md §5.1)."""
    t = RolloutTree("ex", [1])
    a = t.add_turn(ROOT, [11, 12], [90])
    b = t.add_turn(a, [13])
    c = t.add_turn(a, [14], [91])
    d = t.add_turn(c, [15, 16])
    e = t.add_turn(ROOT, [17])
    g = t.add_turn(ROOT, [18, 19, 20])
    for leaf, r in [(b, 1.0), (d, 0.0), (e, 0.0), (g, 1.0)]:
        t.finish(leaf, r)
    return t


def test_informative_comparisons_count_sibling_pairs_with_different_means():
    # Root children a (mean 0.5), e (0), g (1): three differing pairs; at a: b (1) vs c (0): one.
    assert informative_comparisons(_example()) == 4


def test_forest_metrics_on_the_worked_example():
    t = _example()
    chain = RolloutTree("flat", [1])
    for r in (1.0, 1.0):
        chain.finish(chain.add_turn(ROOT, [5, 6]), r)
    m = forest_metrics([t, chain], prefix="")
    assert m["prompts"] == 2 and m["leaves"] == 6
    assert m["mixed_root_ratio"] == 0.5
    assert m["effective_sample_ratio"] == pytest.approx(4 / 6)  # the all-success chain tree gives zero
    assert m["tokens_generated"] == 10 + 4
    assert m["tokens_saved"] == 2  # turn a's two tokens are shared by b and d
    assert m["branch_points"] == 1
    assert m["informative_comparisons"] == 4
    assert m["informative_per_1k_tokens"] == pytest.approx(4000 / 14)


def test_failed_leaves_are_never_effective():
    t = _example()
    bad = t.add_turn(ROOT, [])
    t.finish(bad, None, LeafStatus.FAILED)
    assert effective_leaves(t) == 4
    assert effective_leaves(t, "tree_grpo") == 4
    assert forest_metrics([t], prefix="")["leaves_failed"] == 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 8), parts=st.integers(1, 4), fail=st.sampled_from([0.0, 0.3]))
def test_merging_the_metrics_of_disjoint_forests_gives_the_metrics_of_their_union(make_world, seed, n, parts, fail):
    """What the trainer logs for a step whose trees were grown by several rollout workers."""
    from verl_trace.allocation import Launch

    world = make_world(seed=seed, fail_prob=fail)
    trees = world.pool(n)
    for t in trees:
        world.rollout(t, Launch(t.uid, ROOT, 3))
    groups = [trees[i::parts] for i in range(min(parts, n))]  # a worker without roots reports nothing
    merged = merge_step_metrics([forest_metrics(g) for g in groups])
    whole = forest_metrics(trees)
    assert merged.keys() == whole.keys()
    for key, value in whole.items():
        assert merged[key] == pytest.approx(value), key


def test_merge_takes_extremes_and_the_longest_duration():
    merged = merge_step_metrics([
        {"trace/leaves_per_prompt/min": 2.0, "trace/leaves_per_prompt/max": 4.0, "trace/step_seconds": 1.5, "plan/failed": 1.0},
        {"trace/leaves_per_prompt/min": 3.0, "trace/leaves_per_prompt/max": 6.0, "trace/step_seconds": 2.5, "plan/failed": 2.0},
    ])  # fmt: skip
    assert merged == {
        "trace/leaves_per_prompt/min": 2.0, "trace/leaves_per_prompt/max": 6.0, "trace/step_seconds": 2.5, "plan/failed": 3.0,
    }  # fmt: skip

def test_flat_grpo_estimator_counts_every_usable_leaf_of_a_mixed_tree():
    """``grpo`` (ARPO) ignores the tree: all usable leaves are effective iff the group is mixed."""
    from verl_trace.metrics import effective_leaves
    from verl_trace.tree import ROOT, LeafStatus, RolloutTree

    tree = RolloutTree("g")
    a = tree.add_turn(ROOT, [1], [2])
    tree.finish(tree.add_turn(a, [1]), 1.0)
    tree.finish(tree.add_turn(a, [1]), 0.0)
    tree.finish(tree.add_turn(ROOT, [1]), 0.0)
    tree.finish(tree.add_turn(ROOT, [1]), None, LeafStatus.FAILED)
    assert effective_leaves(tree, "grpo") == 3
    same = RolloutTree("s")
    for _ in range(3):
        same.finish(same.add_turn(ROOT, [1]), 1.0)
    assert effective_leaves(same, "grpo") == 0


def test_advantage_cost_benchmark_runs(tmp_path):
    """benchmarks/advantage_cost.py at a tiny size: both computations timed, on the rows it built."""
    import json

    from benchmarks.advantage_cost import main

    out = tmp_path / "cost.json"
    assert main(["--prompts", "3", "--leaves", "4", "--repeats", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["rows"] == 12 and set(res["median_seconds"]) == {
        "worker_effective_leaves", "worker_forest_metrics", "trainer_compute_trace_advantage"}
    assert all(v > 0 for v in res["median_seconds"].values())
