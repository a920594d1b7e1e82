"""TreeRolloutRunner: a step's planner over real verl agent loops (scripted policy, real tools,
real tokenizer): budgets, tree/output consistency, the trace metadata contract with the
advantage estimator, routing, and faults."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
import torch

from verl_trace.advantage import compute_trace_advantage, tree_turn_advantages
from verl_trace.allocation import ALLOCATORS, step_budget
from verl_trace.config import AdvantageConfig, TraceConfig
from verl_trace.predictor import OraclePredictor, build_featurizer, build_predictor
from verl_trace.protocol import TRACE_FIELD
from verl_trace.rollout import TreePrompt, TreeRolloutRunner, build_planner
from verl_trace.testing.scripted import ScriptedPolicyClient
from verl_trace.tree import ROOT, LeafStatus

SP = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
N_ROOTS, ROLLOUT_N, POOL = 2, 4, 3


def pool(kit, n=POOL):
    return [TreePrompt(f"p{i}", kit.task_row(10 + i, 20 + 3 * i)) for i in range(n)]


def make_planner(tc: TraceConfig, cfg, predictor=None, featurizer=None):
    r = cfg.actor_rollout_ref.rollout
    budget = step_budget(tc, n_roots=N_ROOTS, rollout_n=ROLLOUT_N, response_length=r.response_length)
    return build_planner(
        tc, n_roots=N_ROOTS, budget=budget, max_turns=r.multi_turn.max_assistant_turns,
        predictor=predictor, featurizer=featurizer, rng=np.random.default_rng(0),
    )  # fmt: skip


def oracle_p(tree, node_id):
    """A stand-in ground truth for the oracle allocator: better odds once a tool result is in."""
    tree[node_id].meta["true_p"] = 0.7 if re.search(r"\d", tree[node_id].obs_text) else 0.4


def run_step(kit, tokenizer, cfg, tc, *, policy=None, tools=None, predictor=None, reward_fn=None, **runner_kw):
    r = cfg.actor_rollout_ref.rollout
    client = ScriptedPolicyClient(
        tokenizer, policy or kit.arithmetic_policy(), prompt_length=r.prompt_length, response_length=r.response_length, seed=3
    )
    runner = TreeRolloutRunner(
        cfg, client, tokenizer,
        tools=tools if tools is not None else [kit.make_tool(kit.CalculatorTool)],
        reward_fn=reward_fn or kit.arithmetic_reward, hf_model_type="qwen2", **runner_kw,
    )  # fmt: skip
    featurizer = build_featurizer(tc.predictor, r.multi_turn.max_assistant_turns) if predictor is not None else None
    planner = make_planner(tc, cfg, predictor, featurizer)
    result = asyncio.run(runner.run_step(planner, pool(kit), SP))
    return result, client


def assert_leaves_consistent(result, response_length):
    """Every leaf is a well-formed verl trajectory that its tree renders exactly."""
    budget = result.planner.ctx.ledger.budget.leaves
    assert len(result.leaves) == budget == sum(len(t.leaves()) for t in result.trees.values())
    for leaf in result.leaves:
        out, trace = leaf.output, leaf.output.extra_fields[TRACE_FIELD]
        assert set(trace) == {"tree_uid", "path", "spans", "status"}
        tree = result.trees[trace["tree_uid"]]
        traj = tree.render(leaf.leaf_id, max_response_len=response_length)
        assert trace["path"] == traj.path and trace["path"][0] == ROOT and trace["path"][-1] == leaf.leaf_id
        assert trace["status"] == leaf.status.value == tree[leaf.leaf_id].status.value
        assert len(trace["spans"]) == len(trace["path"]) - 1
        assert out.prompt_ids == tree.prompt_ids
        if traj.response_ids:
            assert out.response_ids == traj.response_ids and out.response_mask == traj.response_mask
            assert out.response_logprobs == traj.response_logprobs
        else:  # failed before generating anything: one masked filler token
            assert leaf.status is LeafStatus.FAILED and out.response_mask == [0] and trace["spans"] == [[0, 0]]
        assert len(out.response_ids) == len(out.response_mask) == len(out.response_logprobs) <= response_length
        assert out.reward_score is not None
        row = out.as_dict()  # what verl's worker writes to TransferQueue
        assert row["rm_scores"].shape == row["responses"].shape == row["rollout_log_probs"].shape
        for (s, e), nid in zip(trace["spans"], trace["path"][1:]):
            node = tree[nid]
            assert out.response_mask[s:e] == ([1] * len(node.action_ids) + [0] * len(node.obs_ids))[: e - s]


def assert_advantages_match_trees(result):
    """extra_fields['trace'] fed to the verl estimator gives the trees' own turn advantages."""
    rows = [leaf.output for leaf in result.leaves]
    width = max(len(o.response_ids) for o in rows)
    mask = torch.zeros(len(rows), width)
    rewards = torch.zeros(len(rows), width)
    for i, o in enumerate(rows):
        mask[i, : len(o.response_mask)] = torch.tensor(o.response_mask, dtype=torch.float32)
        rewards[i, max(0, len(o.response_ids) - 1)] = o.reward_score
    meta = [o.extra_fields[TRACE_FIELD] for o in rows]
    adv, _ = compute_trace_advantage(
        rewards, mask, index=np.array([m["tree_uid"] for m in meta], dtype=object),
        tree_paths=[m["path"] for m in meta], turn_spans=[m["spans"] for m in meta],
        leaf_status=[m["status"] for m in meta],
    )  # fmt: skip
    expected = torch.zeros_like(adv)
    per_tree = {uid: tree_turn_advantages(t, AdvantageConfig()) for uid, t in result.trees.items()}
    for i, m in enumerate(meta):
        for (s, e), a in zip(m["spans"], per_tree[m["tree_uid"]][m["path"][-1]]):
            expected[i, s:e] = float(a)
    torch.testing.assert_close(adv, expected * mask)
    return adv


@pytest.mark.parametrize("allocator", sorted(ALLOCATORS))
def test_budget_holds_for_every_allocator(rollout_kit, tokenizer, allocator):
    kit = rollout_kit
    cfg = kit.make_config()
    tc = TraceConfig(allocator=allocator)
    predictor = None
    on_node = None
    if allocator == "oracle":
        predictor, on_node = OraclePredictor(), oracle_p
    elif ALLOCATORS[allocator].needs_predictor:
        predictor = build_predictor(tc.predictor)
    result, _ = run_step(kit, tokenizer, cfg, tc, predictor=predictor, on_node=on_node)
    m = result.metrics
    assert m["plan/launched"] == m["plan/completed"] == m["trace/leaves"] == N_ROOTS * ROLLOUT_N
    assert m["plan/unspent_leaves"] == 0 and m["trace/leaves_failed"] == 0
    assert not [k for k in m if k.startswith("trace/failed/")]
    assert len(result.trees) == N_ROOTS
    assert_leaves_consistent(result, cfg.actor_rollout_ref.rollout.response_length)
    # Counted independently: the generated tokens of the rows verl trains on (each leaf's whole path,
    # shared turns repeated) and the planner's ledger (each turn once).
    row_tokens = sum(sum(leaf.output.response_mask) for leaf in result.leaves)
    assert m["trace/tokens_unshared"] == row_tokens
    assert m["trace/tokens_generated"] == m["plan/tokens_generated"] <= row_tokens
    assert m["trace/tokens_saved"] == row_tokens - m["plan/tokens_generated"]
    if allocator == "tree_random":  # always branches below the root when a prefix exists
        assert m["trace/branch_points"] > 0 and m["trace/tokens_saved"] > 0
    if predictor is not None and allocator != "oracle":
        anchors, outcomes = result.training_batch()
        assert len(anchors) == len(outcomes) > 0 and anchors.features is not None
        predictor.update(anchors, outcomes)
        # the featurizer ran on every node the runner added
        assert all(n.features is not None for t in result.trees.values() for n in t.nodes)


@pytest.mark.parametrize("schedule", ["pipelined", "rounds"])
def test_continuations_share_the_prefix_nodes_and_the_advantage_contract(rollout_kit, tokenizer, schedule):
    kit = rollout_kit
    cfg = kit.make_config()
    result, _ = run_step(kit, tokenizer, cfg, TraceConfig(allocator="tree_random", schedule=schedule))
    assert result.metrics["trace/leaves"] == N_ROOTS * ROLLOUT_N
    branched = [n for t in result.trees.values() for n in t.nodes[1:] if len(n.children) >= 2]
    assert branched, "tree_random should branch below the root"
    tree = next(t for t in result.trees.values() if any(len(n.children) >= 2 for n in t.nodes[1:]))
    node = next(n for n in tree.nodes[1:] if len(n.children) >= 2)
    below = [leaf for leaf in result.leaves if leaf.uid == tree.uid and node.node_id in leaf.output.extra_fields[TRACE_FIELD]["path"]]
    k = tree.prefix_response_len(node.node_id)
    assert len(below) >= 2 and len({tuple(b.output.response_ids[:k]) for b in below}) == 1
    adv = assert_advantages_match_trees(result)
    assert adv.abs().sum() > 0


def test_planning_in_a_thread_keeps_the_loop_free_and_spends_the_same_budget(rollout_kit, tokenizer):
    """``plan_in_thread`` (what the Ray worker sets): grafting, featurizing and the planner with its
    predictor calls run off the event loop's thread; the step is otherwise the same."""
    import threading

    kit = rollout_kit
    cfg = kit.make_config()
    tc = TraceConfig(allocator="trace")
    threads = set()

    def where(tree, node_id):
        if node_id != ROOT:  # roots are made before planning starts
            threads.add(threading.get_ident())

    result, _ = run_step(
        kit, tokenizer, cfg, tc, predictor=build_predictor(tc.predictor), on_node=where, plan_in_thread=True
    )
    assert threads and threading.get_ident() not in threads
    m = result.metrics
    assert m["plan/launched"] == m["trace/leaves"] == N_ROOTS * ROLLOUT_N and m["plan/unspent_leaves"] == 0
    assert_leaves_consistent(result, cfg.actor_rollout_ref.rollout.response_length)
    assert_advantages_match_trees(result)


def test_request_routing_sticky_per_tree(rollout_kit, tokenizer):
    kit = rollout_kit
    cfg = kit.make_config()
    result, client = run_step(kit, tokenizer, cfg, TraceConfig(allocator="tree_random"))
    assert {rid for rid, _ in client.calls} == {f"trace-{uid}" for uid in result.trees}
    assert set(client.seeds) == {None}


def test_full_determinism_gives_each_run_its_own_request_id_and_seed(rollout_kit, tokenizer):
    kit = rollout_kit
    cfg = kit.make_config(full_determinism=True)
    result, client = run_step(kit, tokenizer, cfg, TraceConfig(allocator="tree_random"))
    ids = [rid for rid, _ in client.calls]
    # one id per run: a run's turns share it, no two runs (leaves) do
    assert len(set(ids)) == len(result.leaves)
    seed_of = dict(zip(ids, client.seeds))
    assert all(s is not None for s in client.seeds) and len(set(seed_of.values())) == len(seed_of)
    assert all(seed_of[rid] == s for rid, s in zip(ids, client.seeds))


def first_branch_fails(kit):
    """The first generation from a prompt already seen (a continuation from a snapshot) raises."""
    seen: set[tuple[int, ...]] = set()
    state = {"failed": False}
    base = kit.arithmetic_policy()

    def policy(call):
        key = tuple(call.prompt_ids)
        if key in seen and call.turn > 0 and not state["failed"]:
            state["failed"] = True
            raise RuntimeError("CUDA error: device-side assert (injected)")
        seen.add(key)
        return base(call)

    return policy


def malformed_sometimes(kit):
    base = kit.arithmetic_policy()

    def policy(call):
        if call.index % 3 == 1:
            return '<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 2"</tool_call>'
        return base(call)

    return policy


@pytest.mark.parametrize(
    "fault",
    ["tool_raises", "tool_times_out", "malformed_tool_call", "engine_error", "engine_error_first_call", "engine_hangs", "reward_raises"],
)
def test_faults_complete_the_tree_within_budget(rollout_kit, tokenizer, fault):
    kit = rollout_kit
    cfg = kit.make_config()
    kw: dict = {}
    if fault == "tool_raises":
        kw["tools"] = [kit.make_tool(kit.BrokenTool)]
    elif fault == "tool_times_out":
        kw.update(tools=[kit.make_tool(kit.SlowTool)], tool_timeout=0.05)
    elif fault == "malformed_tool_call":
        kw["policy"] = malformed_sometimes(kit)
    elif fault == "engine_error":
        kw["policy"] = first_branch_fails(kit)
    elif fault == "engine_error_first_call":
        base = kit.arithmetic_policy()

        def fail_first(call):
            if call.index == 0:
                raise RuntimeError("engine not ready (injected)")
            return base(call)

        kw["policy"] = fail_first
    elif fault == "engine_hangs":
        kw["run_timeout"] = 0.3
    elif fault == "reward_raises":
        calls = {"n": 0}

        async def flaky_reward(output, row):
            calls["n"] += 1
            if calls["n"] == 3:
                raise ConnectionError("reward service down")
            return await kit.arithmetic_reward(output, row)

        kw["reward_fn"] = flaky_reward
    if fault == "engine_hangs":
        result = _run_with_hanging_client(kit, tokenizer, cfg, kw)
    else:
        result, _ = run_step(kit, tokenizer, cfg, TraceConfig(allocator="tree_random"), **kw)
    m = result.metrics
    assert m["trace/leaves"] == m["plan/launched"] == N_ROOTS * ROLLOUT_N and m["plan/unspent_leaves"] == 0
    assert_leaves_consistent(result, cfg.actor_rollout_ref.rollout.response_length)
    assert_advantages_match_trees(result)
    failed = [leaf for leaf in result.leaves if leaf.status is LeafStatus.FAILED]
    expected_failure = {
        "engine_error": "engine_error",
        "engine_error_first_call": "engine_error",
        "engine_hangs": "run_timeout",
        "reward_raises": "reward_error",
    }
    if fault in expected_failure:
        kind = expected_failure[fault]
        assert m[f"trace/failed/{kind}"] == 1 == len(failed) == m["plan/failed"]
        assert failed[0].error == kind and failed[0].output.reward_score == 0.0
        assert result.trees[failed[0].uid][failed[0].leaf_id].meta["error"] == kind
        if fault == "engine_error":  # it failed in a continuation: the leaf hangs below a turn
            assert len(failed[0].output.extra_fields[TRACE_FIELD]["path"]) >= 3
    else:
        kind = {"tool_raises": "tool_exception", "tool_times_out": "tool_timeout", "malformed_tool_call": "malformed_tool_call"}[fault]
        assert m[f"trace/tool_errors/{kind}"] > 0 and not failed
        nodes = [n for t in result.trees.values() for n in t.nodes]
        assert sum(n.tool_errors for n in nodes) == m[f"trace/tool_errors/{kind}"]


def _run_with_hanging_client(kit, tokenizer, cfg, kw):
    """The client's third call never returns (until the runner's run_timeout cancels the run)."""
    r = cfg.actor_rollout_ref.rollout
    inner = ScriptedPolicyClient(tokenizer, kit.arithmetic_policy(), prompt_length=r.prompt_length, response_length=r.response_length, seed=3)
    calls = {"n": 0}

    class HangingClient:
        async def generate(self, request_id, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                await asyncio.sleep(3600)
            return await inner.generate(request_id, **kwargs)

    runner = TreeRolloutRunner(
        cfg, HangingClient(), tokenizer, tools=[kit.make_tool(kit.CalculatorTool)],
        reward_fn=kit.arithmetic_reward, hf_model_type="qwen2", **kw,
    )  # fmt: skip
    planner = make_planner(TraceConfig(allocator="tree_random"), cfg)
    return asyncio.run(runner.run_step(planner, pool(kit), SP))


def test_bad_input_is_named(rollout_kit, tokenizer):
    kit = rollout_kit
    with pytest.raises(ValueError, match="raw_prompt"):
        TreePrompt("p0", {"messages": []})
    cfg = kit.make_config()
    with pytest.raises(ValueError, match="max_concurrency"):
        TreeRolloutRunner(cfg, object(), tokenizer, max_concurrency=0)
    runner = TreeRolloutRunner(cfg, object(), tokenizer)
    planner = make_planner(TraceConfig(allocator="uniform"), cfg)
    dup = [TreePrompt("p0", kit.task_row(1, 2)), TreePrompt("p0", kit.task_row(1, 2))]
    with pytest.raises(ValueError, match="duplicate uids"):
        asyncio.run(runner.run_step(planner, dup, SP))


def test_runs_on_verls_composed_trainer_config(rollout_kit, tokenizer):
    """The runner reads verl's real ppo_trainer config (dataclass-backed sections, nulls included)."""
    from hydra import compose, initialize_config_module

    kit = rollout_kit
    overrides = [
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.prompt_length=512",
        "actor_rollout_ref.rollout.response_length=256",
        "actor_rollout_ref.rollout.multi_turn.format=hermes",
        "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3",
    ]
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    assert cfg.actor_rollout_ref.rollout.multi_turn.max_user_turns is None
    result, _ = run_step(kit, tokenizer, cfg, TraceConfig(allocator="tree_random"))
    assert result.metrics["trace/leaves"] == N_ROOTS * ROLLOUT_N
    assert_leaves_consistent(result, 256)
