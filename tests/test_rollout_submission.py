"""How a training submission is shared among TRACE rollout workers and gathered by one of them
(no Ray: the Ray worker itself is tested in tests/trainer/test_rollout_worker.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from verl_trace.allocation import worker_budget
from verl_trace.config import TraceConfig
from verl_trace.rollout.submission import Submission, prompt_key, split_roots
from verl_trace.testing.arithmetic import task_row


@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=8), data=st.data())
def test_root_shares_add_up_fit_their_chunks_and_follow_chunk_size(sizes, data):
    n_roots = data.draw(st.integers(0, sum(sizes)))
    shares = split_roots(n_roots, sizes)
    assert sum(shares) == n_roots
    assert all(0 <= r <= s for r, s in zip(shares, sizes))
    exact = [n_roots * s / max(1, sum(sizes)) for s in sizes]
    assert all(abs(r - e) < 1 for r, e in zip(shares, exact))


def test_root_shares_of_verls_chunking():
    assert split_roots(3, [3, 3]) == [2, 1]  # ties go to the earlier chunk
    assert split_roots(4, [2, 2, 2]) == [2, 1, 1]
    assert split_roots(6, [2, 2, 2]) == [2, 2, 2]  # no pool: every prompt is a root
    with pytest.raises(ValueError, match="trace_n_roots"):
        split_roots(7, [3, 3])


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
