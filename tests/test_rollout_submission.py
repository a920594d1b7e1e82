"""How a training submission's roots are chosen from the whole pool and how one worker gathers
its chunk (no Ray: the Ray worker and manager are tested in tests/trainer/test_rollout_worker.py)."""

from __future__ import annotations

import numpy as np
import pytest

from verl_trace.allocation import Budget, worker_budget
from verl_trace.config import TraceConfig
from verl_trace.predictor import build_featurizer, build_predictor
from verl_trace.rollout.runner import TreePrompt, build_planner
from verl_trace.rollout.submission import Submission, choose_roots, pool_seed, prompt_key
from verl_trace.testing.arithmetic import task_row


def _pool(n: int) -> list[TreePrompt]:
    return [TreePrompt(f"u{i}", task_row(i, 3 * i % 7), key=prompt_key(task_row(i, 3 * i % 7))) for i in range(n)]


def _trained_predictor(cfg: TraceConfig, pool: list[TreePrompt]):
    """A shared predictor that has seen outcomes for half the pool's prompts, so its estimates differ."""
    predictor = build_predictor(cfg.predictor)
    featurizer = build_featurizer(cfg.predictor, cfg.max_turns)
    trees = [p.root_tree() for p in pool[::2]]
    from verl_trace.allocation.base import anchor_key
    from verl_trace.predictor.base import AnchorBatch

    feats = np.concatenate([featurizer.featurize(t, [0]) for t in trees])
    batch = AnchorBatch(keys=[anchor_key(t, 0) for t in trees], features=feats)
    rng = np.random.default_rng(0)
    for _ in range(3):
        predictor.update(batch, (rng.random(len(trees)) < 0.5).astype(float))
    return predictor, featurizer


@pytest.mark.parametrize("allocator", ["trace", "prompt", "uniform"])
def test_global_choice_is_one_planners_choice(allocator):
    cfg = TraceConfig.model_validate({"allocator": allocator, "max_turns": 3, "budget": {"leaves_per_prompt": 4}})
    pool = _pool(12)
    predictor, featurizer = _trained_predictor(cfg, pool)
    budget = Budget(leaves=4 * 4)
    choice = choose_roots(cfg, [p.root_tree() for p in pool], n_roots=4, budget=budget, predictor=predictor, featurizer=featurizer,
                          rng=np.random.default_rng(pool_seed(cfg.seed, 3, [p.uid for p in pool])))
    single = build_planner(cfg, n_roots=4, budget=budget, max_turns=3, predictor=predictor, featurizer=featurizer,
                           rng=np.random.default_rng(pool_seed(cfg.seed, 3, [p.uid for p in pool])))
    single.start([p.root_tree() for p in pool])
    assert choice.roots == [u for u in (p.uid for p in pool) if u in single.ctx.trees]
    assert len(choice.roots) == 4
    assert choice.metrics["trace/pool/prompts"] == 12 and choice.metrics["trace/pool/roots"] == 4
    if allocator == "uniform":
        assert choice.roots == ["u0", "u1", "u2", "u3"] and "trace/pool/p_hat/mean" not in choice.metrics
    else:
        m = choice.metrics
        assert m["trace/pool/p_hat/min"] <= m["trace/pool/root_p_hat/mean"] <= m["trace/pool/p_hat/max"]


def test_choice_needs_enough_prompts():
    cfg = TraceConfig.model_validate({"allocator": "uniform", "max_turns": 3})
    with pytest.raises(ValueError, match="fewer than the 5 roots"):
        choose_roots(cfg, [p.root_tree() for p in _pool(3)], n_roots=5, budget=Budget(leaves=20))


def test_worker_budget_shares_the_token_cap():
    cfg = TraceConfig.model_validate({"budget": {"leaves_per_prompt": 4, "tokens": 1000}})
    b = worker_budget(cfg, n_roots=1, step_roots=4, rollout_n=8, response_length=64)
    assert (b.leaves, b.tokens, b.max_leaf_tokens) == (4, 250, 64)
    assert worker_budget(cfg, n_roots=4, step_roots=4, rollout_n=8, response_length=64).tokens == 1000
    assert worker_budget(TraceConfig(), n_roots=2, step_roots=4, rollout_n=8, response_length=64).tokens is None


def test_prompt_key_is_the_prompt_not_the_step():
    a, b = task_row(1, 2), task_row(1, 3)
    assert prompt_key(a) == prompt_key({**task_row(1, 2), "uid": "another-step"}) != prompt_key(b)


def test_submission_gathers_verls_prompt_rows():
    sub = Submission(id="s", size=2, n_roots=1, step_roots=1)
    sp = {"temperature": 1.0}
    first = {**task_row(1, 2), "uid": "u1", "agent_name": "trace_agent", "global_steps": 5, "__rollout_n__": 8}
    assert not sub.add(first, sp)
    assert sub.add({**task_row(3, 4), "uid": "u2", "agent_name": "trace_agent", "global_steps": 5}, sp)
    assert sub.agent_names == {"trace_agent"} and sub.sampling_params is sp and sub.global_steps == 5
    # the stored row is what verl's _run_agent_loop passes on as kwargs
    assert "agent_name" not in sub.rows["u1"] and "__rollout_n__" not in sub.rows["u1"]
    prompts = sub.tree_prompts()
    assert [p.uid for p in prompts] == ["u1", "u2"] and prompts[0].key == prompt_key(first)
    assert sub.seed(0) == Submission(id="t", size=2, n_roots=1, step_roots=1, rows=dict(sub.rows)).seed(0)
    with pytest.raises(ValueError, match="submitted twice"):
        sub.add(first, sp)


def test_settling_the_pool_never_leaves_the_trainer_short_of_roots():
    sub = Submission(id="s", size=4, n_roots=2, step_roots=2)
    for i in range(4):
        sub.add({**task_row(i, i), "uid": f"u{i}", "agent_name": "trace_agent", "global_steps": 1}, {})
    assert sub.settle({"u2", "u0"}) == ([], ["u1", "u3"])  # trees finish by their writer, the rest goes
    assert sub.settle({"u2"}) == (["u0"], ["u1", "u3"])  # one root short: a prompt fails in its place
    assert sub.settle(set()) == (["u0", "u1"], ["u2", "u3"])  # the rollout failed: the share of roots fails
