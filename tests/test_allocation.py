import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_trace.allocation import (
    ALLOCATORS,
    Budget,
    Launch,
    build_allocator,
    leaves_per_prompt,
    new_planner,
    pool_size,
    step_budget,
)
from verl_trace.allocation.drive import drive
from verl_trace.allocation.trace import beta_moment, mixed_probability
from verl_trace.config import TraceConfig
from verl_trace.predictor import build_predictor
from verl_trace.tree import ROOT, LeafStatus


def _planner(name, n_roots, budget, max_turns=4, **cfg_kw):
    alloc_kw = cfg_kw.pop("allocation", {})
    cfg = TraceConfig(allocator=name, **cfg_kw)
    for k, v in alloc_kw.items():
        setattr(cfg.allocation, k, v)
    pred = build_predictor(cfg.predictor, oracle=name == "oracle")
    return new_planner(cfg, build_allocator(cfg), n_roots=n_roots, budget=budget, max_turns=max_turns, predictor=pred)


@settings(max_examples=500, deadline=None)
@given(
    name=st.sampled_from(sorted(ALLOCATORS)),
    seed=st.integers(0, 100_000),
    n_roots=st.integers(1, 6),
    per_root=st.integers(2, 9),
    extra_leaves=st.integers(0, 7),
    pool_factor=st.sampled_from([1.0, 1.5, 3.0]),
    max_turns=st.integers(1, 5),
    schedule=st.sampled_from(["pipelined", "rounds"]),
    ready_fraction=st.sampled_from([0.5, 1.0]),
    rounds=st.integers(0, 3),
    fail_prob=st.sampled_from([0.0, 0.2]),
)
def test_every_allocator_spends_exactly_the_leaf_budget(
    make_world, name, seed, n_roots, per_root, extra_leaves, pool_factor, max_turns, schedule, ready_fraction, rounds, fail_prob
):
    leaves = n_roots * per_root + extra_leaves
    world = make_world(seed=seed, max_turns=max_turns, fail_prob=fail_prob)
    pl = _planner(name, n_roots, Budget(leaves), max_turns=max_turns, schedule=schedule, ready_fraction=ready_fraction,
                  allocation={"pool_factor": pool_factor, "rounds": rounds})
    pool = world.pool(int(np.ceil(n_roots * pool_factor)))
    drive(pl, pool, world.rollout)
    trees = pl.ctx.trees.values()
    assert len(pl.ctx.trees) <= n_roots
    assert sum(len(t.leaves()) for t in trees) == leaves  # never more, never silently fewer
    assert pl.ctx.ledger.launched == pl.ctx.ledger.completed == leaves
    for t in trees:
        for leaf in t.leaves():  # every leaf's turns respect the turn limit
            assert leaf.depth <= max_turns
    m = pl.metrics()
    assert m["plan/unspent_leaves"] == 0 and m["plan/launched"] == leaves


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(ALLOCATORS)), seed=st.integers(0, 10_000), tokens=st.integers(1, 400))
def test_token_budget_is_never_exceeded_and_unspent_leaves_are_explained(make_world, name, seed, tokens):
    world = make_world(seed=seed, max_turns=3)
    max_leaf_tokens = 3 * 19  # RandomWorld turns have <= 19 generated tokens
    pl = _planner(name, 3, Budget(18, tokens=tokens, max_leaf_tokens=max_leaf_tokens), max_turns=3)
    drive(pl, world.pool(3), world.rollout)
    led = pl.ctx.ledger
    assert led.tokens_generated <= tokens
    assert led.launched <= 18
    if tokens >= 3 * max_leaf_tokens:  # room for one worst-case chain per root: no root is left empty
        assert len(pl.ctx.trees) == 3 and all(t.leaves() for t in pl.ctx.trees.values())
    if led.launched < 18:
        assert led.unspent_reasons.get("token_budget", 0) > 0
        assert pl.metrics()["plan/unspent_leaves"] == 18 - led.launched


def test_uniform_is_grpo_and_trees_branch_from_prefixes(make_world):
    world = make_world(seed=1)
    pl = _planner("uniform", 4, Budget(20))
    drive(pl, world.pool(6), world.rollout)
    assert [len(t.leaves()) for t in pl.ctx.trees.values()] == [5, 5, 5, 5]
    assert all(len(t.root.children) == 5 for t in pl.ctx.trees.values())  # independent chains
    assert list(pl.ctx.trees) == ["u0", "u1", "u2", "u3"]  # the first prompts, no selection
    tr = _planner("tree_random", 4, Budget(32), allocation={"rounds": 2})
    drive(tr, make_world(seed=1).pool(4), make_world(seed=1).rollout)
    assert any(len(t[n].children) >= 2 for t in tr.ctx.trees.values() for n in range(1, len(t)))


def test_oracle_beats_uniform_on_effective_samples(make_world):
    """With the true success probability, the TRACE rule finds mixed groups far more often."""

    def esr(name, seed):
        world = make_world(seed=seed)
        pl = _planner(name, 16, Budget(16 * 6), allocation={"pool_factor": 3.0})
        drive(pl, world.pool(48), world.rollout)
        eff = tot = 0
        for t in pl.ctx.trees.values():
            r = [leaf.reward for leaf in t.leaves()]
            tot += len(r)
            eff += len(r) if 0 < sum(r) < len(r) else 0
        return eff / tot

    oracle = np.mean([esr("oracle", s) for s in range(3)])
    uniform = np.mean([esr("uniform", s) for s in range(3)])
    assert oracle > uniform + 0.15


def test_beta_moments_match_monte_carlo():
    rng = np.random.default_rng(0)
    a, b = np.array([2.0, 0.5]), np.array([3.0, 0.7])
    p = rng.beta(a, b, size=(200_000, 2))
    np.testing.assert_allclose(beta_moment(a, b, 3), (p**3).mean(0), rtol=0.02)
    draws = rng.random((200_000, 2, 4)) < p[..., None]
    mixed = (draws.any(-1) & ~draws.all(-1)).mean(0)
    np.testing.assert_allclose(mixed_probability(a, b, 4), mixed, atol=0.01)
    assert np.all(mixed_probability(a, b, 1) == 0)


def test_trace_branches_from_the_promising_prefix_of_an_all_fail_tree(make_world):
    """All first chains failed; one prefix is predicted to succeed often: TRACE spends there."""
    world = make_world(seed=3)
    pl = _planner("oracle", 1, Budget(6), allocation={"rounds": 1, "initial_fraction": 0.5})
    (tree,) = world.pool(1)
    first = pl.start([tree])
    assert first == [type(first[0])("u0", ROOT, 3, round=0)]
    ids = []
    for k in range(3):
        a = tree.add_turn(ROOT, [1, 2], [3], meta={"true_p": 0.9 if k == 0 else 0.02})
        leaf = tree.add_turn(a, [4], meta={"true_p": 0.0})
        tree.finish(leaf, 0.0)
        ids.append((a, leaf))
    tree.root.meta["true_p"] = 0.05
    launches = pl.leaves_done([(first[0], leaf) for _, leaf in ids])
    assert sum(x.count for x in launches) == 3
    assert {x.anchor for x in launches} == {ids[0][0]}


def test_planner_rejects_invalid_decisions_and_reports(make_world):
    world = make_world(seed=0)
    pl = _planner("uniform", 2, Budget(4))
    launches = pl.start(world.pool(2))
    with pytest.raises(ValueError, match="not a finished leaf"):
        pl.leaves_done([(launches[0], ROOT)])
    with pytest.raises(RuntimeError, match="called twice"):
        pl.start(world.pool(2))
    pl2 = _planner("uniform", 2, Budget(4))
    pl2.start(world.pool(2, prefix="v"))
    with pytest.raises(ValueError, match="unknown tree"):
        pl2._issue([Launch("nope", ROOT, 1)])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_roots": 4, "budget": Budget(6)}, "smaller than 4 roots"),
        ({"n_roots": 0, "budget": Budget(6)}, "n_roots"),
        ({"n_roots": 2, "budget": Budget(6), "max_turns": 0}, "max_turns"),
    ],
)
def test_bad_sizes_fail_at_construction_naming_the_field(make_world, kwargs, match):
    cfg = TraceConfig(allocator="uniform")
    with pytest.raises(ValueError, match=match):
        pl = new_planner(cfg, build_allocator(cfg), max_turns=kwargs.pop("max_turns", 3), **kwargs)
        pl.start(make_world().pool(kwargs["n_roots"]))


def test_budget_validation():
    with pytest.raises(ValueError, match="budget.leaves"):
        Budget(0)
    with pytest.raises(ValueError, match="max_leaf_tokens"):
        Budget(4, tokens=100)


def test_step_budget_applies_the_leaves_per_prompt_default_once():
    default, set_ = TraceConfig(), TraceConfig(budget={"leaves_per_prompt": 6, "tokens": 900})
    assert leaves_per_prompt(default, 8) == 8 and leaves_per_prompt(set_, 8) == 6 and leaves_per_prompt(default, None) is None
    assert step_budget(default, n_roots=4, rollout_n=8) == Budget(32)
    assert step_budget(set_, n_roots=4, rollout_n=8, response_length=64) == Budget(24, tokens=900, max_leaf_tokens=64)
    with pytest.raises(ValueError, match="trace.budget.leaves_per_prompt"):
        step_budget(default, n_roots=4)
    with pytest.raises(ValueError, match="max_leaf_tokens"):  # a token cap needs the worst case per leaf
        step_budget(set_, n_roots=4)


def test_pool_size_rounds_up_once_to_whole_fetches():
    assert pool_size(1.0, 512) == 512 and pool_size(2.0, 64) == 128
    assert pool_size(1.5, 7) == 11  # 10.5 prompts round up (the simulator used to round down)
    assert pool_size(1.1, 10) == 11  # 11.000000000000002 in floating point: not 12
    assert pool_size(1.5, 512, fetch=512) == 1024  # 768 prompts, rounded up to whole dataloader batches
    assert pool_size(1.5, 512, fetch=64) == 768
    assert pool_size(1.5, 8, fetch=1) == 12
    assert pool_size(1.0, 512, fetch=1000) == 1000  # a fetch larger than the batch: one whole fetch
    with pytest.raises(ValueError, match="fetch"):
        pool_size(1.0, 4, fetch=0)


def test_trace_needs_a_predictor():
    cfg = TraceConfig(allocator="trace")
    with pytest.raises(ValueError, match="needs a predictor"):
        new_planner(cfg, build_allocator(cfg), n_roots=1, budget=Budget(4), max_turns=3)


def test_failed_leaves_count_against_the_budget(make_world):
    world = make_world(seed=5, fail_prob=0.5)
    pl = _planner("trace", 3, Budget(15))
    drive(pl, world.pool(3), world.rollout)
    failed = sum(1 for t in pl.ctx.trees.values() for leaf in t.leaves() if leaf.status is LeafStatus.FAILED)
    assert failed > 0
    assert pl.metrics()["plan/failed"] == failed
    assert sum(len(t.leaves()) for t in pl.ctx.trees.values()) == 15


@pytest.mark.parametrize("mode", ["leaf", "anchor", "first"])
def test_training_batch_weights_rows_by_anchor_as_configured(make_world, mode):
    """``predictor.example_weight``: every row weighs 1 (leaf); every anchor's rows sum to 1
    (anchor); or every anchor's weight sits on the leaves committed before any outcome below it was
    seen, a root's first chains and a prefix's creating leaf (first)."""
    world = make_world(seed=3, max_turns=4)
    cfg_pl = _planner("tree_random", 4, Budget(32), allocation={"rounds": 2})
    cfg_pl.cfg.predictor.example_weight = mode
    drive(cfg_pl, world.pool(4), world.rollout)
    for t in cfg_pl.ctx.trees.values():  # this world's turn texts repeat: name every prefix apart
        for n in t.nodes[1:]:
            n.meta["key"] = f"{t.uid}/{n.node_id}"
    batch, y = cfg_pl.training_batch()
    keys = np.asarray(batch.keys)
    assert len(y) == len(keys) and set(np.unique(y)) <= {0.0, 1.0}
    if mode == "leaf":
        assert batch.weight is None
        return
    per_key = {k: batch.weight[keys == k].sum() for k in set(batch.keys)}
    assert all(v == pytest.approx(1.0) for v in per_key.values())
    if mode == "first":
        for t in cfg_pl.ctx.trees.values():
            root_rows = keys == t.key
            first_chains = len(t.root.children)  # roots keep their first chains; expansions branch below
            launched_at_root = [(a, f) for (u, _), (a, f) in cfg_pl._launch_of.items() if u == t.uid and f]
            assert np.count_nonzero(batch.weight[root_rows]) == len(launched_at_root) <= first_chains
            for n in t.nodes[1:]:  # a prefix counts only the leaf that created it
                if not n.terminal:
                    assert np.count_nonzero(batch.weight[keys == n.meta["key"]]) == 1


def test_registry_and_config_schema_name_the_same_allocators():
    """``config.AllocatorName`` (the schema, layer 1) repeats the registry's names (layer 3) so a bad
    name fails at load time; they must stay the same list."""
    from typing import get_args

    from verl_trace.config import AllocatorName, TraceConfigError, load_trace_config

    assert list(get_args(AllocatorName)) == list(ALLOCATORS)
    assert all(cls.name == name for name, cls in ALLOCATORS.items())
    with pytest.raises(TraceConfigError, match="trace.allocator: Input should be 'uniform', 'prompt'"):
        load_trace_config({"allocator": "grpo"})


@pytest.mark.parametrize("name", list(ALLOCATORS))
def test_capabilities_describe_what_the_allocator_does(make_world, name):
    """What the trainer, worker and simulator read off the class is what the allocator does: one
    without ``needs_predictor`` runs without one, one without ``selects_roots`` takes the pool's first
    prompts, one without ``grows_trees`` launches only fresh chains at the root."""
    cls = ALLOCATORS[name]
    cfg = TraceConfig(allocator=name, allocation={"pool_factor": 2.0, "rounds": 2})
    predictor = build_predictor(cfg.predictor, oracle=cls.simulator_only) if cls.needs_predictor else None
    pl = new_planner(cfg, cls(cfg), n_roots=4, budget=Budget(4 * 6), max_turns=4, predictor=predictor)
    world = make_world(seed=11)
    pool = world.pool(8)
    launches = []

    def rollout(tree, launch):
        launches.append(launch)
        return world.rollout(tree, launch)

    drive(pl, pool, rollout)
    if not cls.selects_roots:
        assert list(pl.ctx.trees) == [t.uid for t in pool[:4]]
    below_root = [x for x in launches if x.anchor != ROOT]
    if cls.grows_trees:
        assert cls.estimator in ("trace", "tree_grpo", "grpo")
        if name == "tree_random":  # branches whenever a prefix exists
            assert below_root
    else:
        assert not below_root and cls.estimator == "trace"  # on chains, trace is exactly GRPO
