"""TraceToolAgentLoop on verl's real ToolAgentLoop code path: a real tokenizer with a chat
template, verl's hermes tool-call parser and Qwen token builder, real BaseTool subclasses, and a
seeded scripted policy behind verl's LLM client interface."""

from __future__ import annotations

import asyncio
import copy

import pytest

from verl_trace.rollout import AgentSnapshot, TraceToolAgentLoop
from verl_trace.testing.scripted import ScriptedPolicyClient
from verl_trace.tree import LeafStatus

SP = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}


def scripted(tokenizer, cfg, replies):
    """A client that plays ``replies`` (a list, or a function of the call) in order."""

    def policy(call):
        return replies(call) if callable(replies) else replies[call.index]

    r = cfg.actor_rollout_ref.rollout
    return ScriptedPolicyClient(tokenizer, policy, prompt_length=r.prompt_length, response_length=r.response_length, seed=1)


def new_loop(kit, tokenizer, client, cfg, tools=None, **kw):
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tools = [kit.make_tool(kit.CalculatorTool)] if tools is None else tools
    return TraceToolAgentLoop(
        trainer_config=DictConfigWrap(cfg),
        server_manager=client,
        tokenizer=tokenizer,
        processor=None,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(cfg.data),
        hf_model_type="qwen2",
        tools=ToolListWrap(tools),
        **kw,
    )


def test_trunk_records_turns_and_boundary_snapshots(rollout_kit, tokenizer):
    kit = rollout_kit
    cfg = kit.make_config()
    replies = [kit.call_text("12 + 30"), kit.call_text("2 * 21"), "The answer is <answer>42</answer>"]

    async def go():
        loop = new_loop(kit, tokenizer, scripted(tokenizer, cfg, replies), cfg)
        out = await loop.run(SP, **kit.task_row(12, 30))
        return loop.result, out

    res, out = asyncio.run(go())
    assert res.status is LeafStatus.OK
    assert [s.boundary for s in res.snapshots] == [0, 1, 2]
    assert out.num_turns == 2 + 3 + 1  # verl's count: user turns + assistant turns + 1
    turns = res.turns
    assert len(turns) == 3
    resp, mask, lps = out.response_ids, out.response_mask, out.response_logprobs
    assert res.response_ids == resp and res.response_mask == mask
    for t in turns:
        # generated tokens are trained on, the observation (tool output + next prompt) is masked
        assert mask[t.start : t.action_end] == [1] * (t.action_end - t.start)
        assert mask[t.action_end : t.end] == [0] * (t.end - t.action_end)
        assert all(lp == 0.0 for lp in lps[t.action_end : t.end])
        assert t.mean_logprob == pytest.approx(sum(lps[t.start : t.action_end]) / (t.action_end - t.start))
    assert turns[0].start == 0 and turns[0].end == turns[1].start and turns[-1].end == len(resp)
    assert [t.tool_calls for t in turns] == [1, 1, 0] and [t.obs_text for t in turns] == ["42", "42", ""]
    obs = tokenizer.decode(resp[turns[0].action_end : turns[0].end])
    assert obs == "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    assert "<answer>42</answer>" in turns[2].text and turns[2].end == turns[2].action_end
    # each snapshot sits exactly at its boundary
    for s in res.snapshots[1:]:
        assert s.response_len == turns[s.boundary - 1].end
        assert s.prompt_ids == out.prompt_ids + resp[: s.response_len]
    assert out.extra_fields["tool_rewards"] == [0.5, 0.5]
    assert out.extra_fields["calculator_calls"] == ["12 + 30", "2 * 21"]


def test_resume_reproduces_prefix_exactly_and_the_branch_diverges(rollout_kit, tokenizer):
    kit = rollout_kit
    cfg = kit.make_config()
    trunk_replies = [kit.call_text("12 + 30"), kit.call_text("40 + 2"), "The answer is <answer>42</answer>"]

    async def go():
        trunk = new_loop(kit, tokenizer, scripted(tokenizer, cfg, trunk_replies), cfg)
        trunk_out = await trunk.run(SP, **kit.task_row(12, 30))
        snap = trunk.result.snapshots[1]
        frozen = copy.deepcopy(snap.state)
        branch = new_loop(kit, tokenizer, scripted(tokenizer, cfg, ["I think <answer>41</answer>"]), cfg)
        branch_out = await branch.resume(snap, SP, **kit.task_row(12, 30))
        return trunk, trunk_out, snap, frozen, branch, branch_out

    trunk, t_out, snap, frozen, branch, b_out = asyncio.run(go())
    k = snap.response_len
    assert b_out.prompt_ids == t_out.prompt_ids
    assert b_out.response_ids[:k] == t_out.response_ids[:k]
    assert b_out.response_mask[:k] == t_out.response_mask[:k]
    assert b_out.response_logprobs[:k] == t_out.response_logprobs[:k]
    assert b_out.response_ids[k:] != t_out.response_ids[k:]
    assert "<answer>41</answer>" in tokenizer.decode(b_out.response_ids[k:])
    # the branch inherits the prefix's turns, tool rewards and per-trajectory tool state only
    assert [t.end for t in branch.result.turns[:1]] == [t.end for t in trunk.result.turns[:1]]
    assert len(branch.result.turns) == 2 and branch.result.start_boundary == 1
    assert b_out.extra_fields["tool_rewards"] == [0.5]
    assert b_out.extra_fields["calculator_calls"] == ["12 + 30"]
    assert b_out.num_turns == 1 + 2 + 1
    assert branch.result.snapshots == []  # no new boundary: the branch answered at once
    # resuming neither changed the snapshot nor shares state with the trunk
    assert snap.state["prompt_ids"] == frozen["prompt_ids"] and snap.state["messages"] == frozen["messages"]
    assert t_out.extra_fields["calculator_calls"] == ["12 + 30", "40 + 2"]


def test_concurrent_branches_from_one_snapshot_keep_separate_state(rollout_kit, tokenizer):
    kit = rollout_kit
    cfg = kit.make_config()

    async def go():
        trunk = new_loop(kit, tokenizer, scripted(tokenizer, cfg, [kit.call_text("12 + 30"), "<answer>42</answer>"]), cfg)
        await trunk.run(SP, **kit.task_row(12, 30))
        snap = trunk.result.snapshots[1]
        r = cfg.actor_rollout_ref.rollout
        # one shared client with a random delay, so the branches interleave
        client = ScriptedPolicyClient(
            tokenizer,
            lambda c: kit.call_text(f"{c.index} + 1") if c.turn == 1 else f"<answer>{c.index}</answer>",
            prompt_length=r.prompt_length,
            response_length=r.response_length,
            delay_s=0.01,
        )
        loops = [new_loop(kit, tokenizer, client, cfg) for _ in range(4)]
        outs = await asyncio.gather(*(lp.resume(snap, SP, **kit.task_row(12, 30)) for lp in loops))
        return snap, loops, outs, client

    snap, loops, outs, client = asyncio.run(go())
    k = snap.response_len
    assert len({tuple(o.response_ids[:k]) for o in outs}) == 1
    assert len({tuple(o.response_ids[k:]) for o in outs}) == 4
    for o in outs:
        calls = o.extra_fields["calculator_calls"]
        assert calls[0] == "12 + 30" and len(calls) == 2  # the prefix's call, then its own
    assert len({o.extra_fields["calculator_calls"][1] for o in outs}) == 4
    # sticky routing: every branch reuses the trunk's request id
    assert {rid for rid, _ in client.calls} == {snap.request_id}
    assert all(lp.result.snapshots[0].boundary == 2 for lp in loops)


def test_request_id_override_for_fresh_and_resumed_runs(rollout_kit, tokenizer):
    kit = rollout_kit
    cfg = kit.make_config()

    async def go():
        client = scripted(tokenizer, cfg, [kit.call_text("1 + 2"), "<answer>3</answer>", "<answer>4</answer>"])
        trunk = new_loop(kit, tokenizer, client, cfg, request_id="tree-a")
        await trunk.run(SP, **kit.task_row(1, 2))
        branch = new_loop(kit, tokenizer, client, cfg, request_id="tree-a-1-1")
        await branch.resume(trunk.result.snapshots[1], SP, **kit.task_row(1, 2))
        return client

    client = asyncio.run(go())
    assert [rid for rid, _ in client.calls] == ["tree-a", "tree-a", "tree-a-1-1"]


def test_registered_as_trace_agent_and_built_like_verls_worker(rollout_kit, tokenizer):
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
    from verl.utils.dataset.rl_dataset import RLHFDataset

    kit = rollout_kit
    cfg = kit.make_config()
    assert _agent_loop_registry["trace_agent"] == {"_target_": "verl_trace.rollout.agent_loop.TraceToolAgentLoop"}

    async def go():
        loop = hydra.utils.instantiate(
            config=_agent_loop_registry["trace_agent"],
            trainer_config=DictConfigWrap(config=cfg),
            server_manager=scripted(tokenizer, cfg, [kit.call_text("1 + 2"), "<answer>3</answer>"]),
            tokenizer=tokenizer,
            processor=None,
            hf_model_type="qwen2",
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(cfg.data),
            tools=ToolListWrap([kit.make_tool(kit.CalculatorTool)]),
        )
        out = await loop.run(SP, **kit.task_row(1, 2))
        return loop, out

    loop, out = asyncio.run(go())
    assert isinstance(loop, TraceToolAgentLoop)
    assert sum(out.response_mask) < len(out.response_mask) and loop.result.status is LeafStatus.OK


@pytest.mark.parametrize(
    "case, expected",
    [
        ("answer", LeafStatus.OK),
        ("turn_limit_with_tool_call", LeafStatus.TRUNCATED),
        ("response_length", LeafStatus.TRUNCATED),
    ],
)
def test_leaf_status(rollout_kit, tokenizer, case, expected):
    kit = rollout_kit
    if case == "response_length":
        cfg = kit.make_config(response_length=24)
        replies = ["<think>" + "add the numbers carefully " * 20 + "</think>"]
    elif case == "turn_limit_with_tool_call":
        cfg = kit.make_config(multi_turn={"max_assistant_turns": 2})
        replies = [kit.call_text("1 + 2")] * 2
    else:
        cfg = kit.make_config()
        replies = ["<answer>3</answer>"]

    async def go():
        loop = new_loop(kit, tokenizer, scripted(tokenizer, cfg, replies), cfg)
        out = await loop.run(SP, **kit.task_row(1, 2))
        return loop.result, out

    res, out = asyncio.run(go())
    assert res.status is expected
    if case == "response_length":
        assert len(out.response_ids) == 24 and not res.turns[-1].stopped
    if case == "turn_limit_with_tool_call":
        assert res.turns[-1].tool_calls == 1 and len(res.turns) == 2


@pytest.mark.parametrize(
    "case, kind",
    [
        ("raises", "tool_exception"),
        ("times_out", "tool_timeout"),
        ("unknown_tool", "unknown_tool"),
        ("bad_arguments", "bad_arguments"),
        ("malformed", "malformed_tool_call"),
    ],
)
def test_tool_errors_become_observations_and_are_recorded(rollout_kit, tokenizer, case, kind):
    kit = rollout_kit
    cfg = kit.make_config()
    tool_cls = {"raises": kit.BrokenTool, "times_out": kit.SlowTool}.get(case, kit.CalculatorTool)
    first = {
        "unknown_tool": kit.call_text("1 + 2", tool="abacus"),
        "bad_arguments": '<tool_call>{"name": "calculator", "arguments": "1 + 2"}</tool_call>',
        "malformed": '<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 2"</tool_call>',
    }.get(case, kit.call_text("1 + 2"))

    async def go():
        loop = new_loop(
            kit, tokenizer, scripted(tokenizer, cfg, [first, "<answer>3</answer>"]), cfg,
            tools=[kit.make_tool(tool_cls)], tool_timeout=0.2,
        )  # fmt: skip
        out = await loop.run(SP, **kit.task_row(1, 2))
        return loop.result, out

    res, out = asyncio.run(go())
    assert res.turns[0].error_kinds == [kind]
    if case == "malformed":
        # verl's parser drops the call, so the loop ends: an ordinary leaf the reward judges
        assert len(res.turns) == 1 and res.turns[0].tool_calls == 0
    else:
        assert len(res.turns) == 2 and res.status is LeafStatus.OK
        assert res.turns[0].obs_text.startswith(("Error", "Unknown function"))
        assert out.response_mask[res.turns[0].action_end : res.turns[0].end] == [0] * (res.turns[0].end - res.turns[0].action_end)


def test_snapshot_survives_pickling(rollout_kit, tokenizer):
    """Snapshots hold no tool objects, so they can move between processes (e.g. Ray workers)."""
    import pickle

    kit = rollout_kit
    cfg = kit.make_config()

    async def go():
        loop = new_loop(kit, tokenizer, scripted(tokenizer, cfg, [kit.call_text("1 + 2"), "<answer>3</answer>"]), cfg)
        await loop.run(SP, **kit.task_row(1, 2))
        snap = pickle.loads(pickle.dumps(loop.result.snapshots[1]))
        branch = new_loop(kit, tokenizer, scripted(tokenizer, cfg, ["<answer>4</answer>"]), cfg)
        return snap, await branch.resume(snap, SP, **kit.task_row(1, 2))

    snap, out = asyncio.run(go())
    assert isinstance(snap, AgentSnapshot) and "_active_tools" not in snap.state and "metrics" not in snap.state
    assert out.response_ids[: snap.response_len] == snap.prompt_ids[len(out.prompt_ids) :]
