"""The CPU mini versions of the two tasks through ``TreeRolloutRunner`` + ``TraceToolAgentLoop``
with the tasks' scripted teachers (the demonstrations a warm start would use): real tools
(sandboxed Python, BFCL simulators), real rewards, branched trees. A correct teacher must score 1
on every leaf of every tree, which fails if siblings shared an environment (a branch would see
its sibling's calls); an imperfect one gives mixed trees."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from verl_trace.allocation import step_budget
from verl_trace.config import TraceConfig
from verl_trace.demo.render import turn_label
from verl_trace.rollout import TreePrompt, TreeRolloutRunner, build_planner, compute_score_reward
from verl_trace.tasks import get_task, loop_kwargs
from verl_trace.testing.scripted import ScriptedPolicyClient

SP = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
N_ROOTS, LEAVES = 3, 4


def run_mini(task, tokenizer, make_config, mistake_rate, seed=0):
    cfg = make_config(prompt_length=32768, response_length=8192, multi_turn=dict(task.rollout["multi_turn"]))
    r = cfg.actor_rollout_ref.rollout
    client = ScriptedPolicyClient(tokenizer, task.teacher(seed=seed, mistake_rate=mistake_rate),
                                  prompt_length=r.prompt_length, response_length=r.response_length, seed=seed)
    runner = TreeRolloutRunner(cfg, client, tokenizer, tools=task.tools(), hf_model_type="qwen2",
                               reward_fn=compute_score_reward(task.compute_score, tokenizer), max_concurrency=8)
    tc = TraceConfig(allocator="tree_random")
    budget = step_budget(tc, n_roots=N_ROOTS, rollout_n=LEAVES, response_length=r.response_length)
    planner = build_planner(tc, n_roots=N_ROOTS, budget=budget, max_turns=r.multi_turn.max_assistant_turns,
                            rng=np.random.default_rng(seed))
    prompts = [TreePrompt(f"{task.name}{i}", loop_kwargs(row)) for i, row in enumerate(task.rows("train")[:N_ROOTS])]
    return asyncio.run(runner.run_step(planner, prompts, SP))


@pytest.mark.parametrize("name", ["bfcl", "math"])
def test_teacher_trees(name, tokenizer, rollout_kit):
    task = get_task(name)
    perfect = run_mini(task, tokenizer, rollout_kit.make_config, mistake_rate=0.0)
    assert len(perfect.leaves) == N_ROOTS * LEAVES
    assert all(leaf.output.reward_score == 1.0 for leaf in perfect.leaves), [leaf.output.reward_score for leaf in perfect.leaves]
    branched = [n for t in perfect.trees.values() for n in t.nodes[1:] if len(n.children) >= 2]
    assert branched, "tree_random should branch some turn-level prefixes"
    # the tree keeps what the rendering shows: tool calls as name(args), observations as text
    labels = {turn_label(n, 80) for t in perfect.trees.values() for n in t.nodes[1:]}
    tool = "python(" if name == "math" else "("
    assert any(label.startswith(tool) or tool in label for label in labels), labels
    assert all(n.obs_text for t in perfect.trees.values() for n in t.nodes[1:] if n.tool_calls)

    noisy = run_mini(task, tokenizer, rollout_kit.make_config, mistake_rate=0.6, seed=1)
    rewards = [leaf.output.reward_score for leaf in noisy.leaves]
    assert 0.0 in rewards and len(rewards) == N_ROOTS * LEAVES
