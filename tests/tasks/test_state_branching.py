"""Stateful tools on rollout trees: BFCL's simulators behind verl's real agent loop
(``TraceToolAgentLoop``, verl's hermes parser and token builder, a real tokenizer), with
multi-turn conversations delivered by the loop and a scripted policy in place of the model.

* two branches resumed from one turn-level prefix make different calls, and each sees only its own
  effects (the trunk and the snapshot are untouched);
* a continuation resumed from any boundary is token for token and state for state the
  uninterrupted trajectory.
"""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

pytest.importorskip("bfcl_eval", reason="bfcl-eval is installed by `make venv` (pip install --no-deps)")

from verl_trace.rewards.bfcl import compute_score  # noqa: E402
from verl_trace.rollout import TraceToolAgentLoop  # noqa: E402
from verl_trace.rollout.agent_loop import PENDING_USER_TURNS  # noqa: E402
from verl_trace.rollout.tool_state import TOOL_STATE_ATTR  # noqa: E402
from verl_trace.tasks import loop_kwargs  # noqa: E402
from verl_trace.tasks.bfcl import BfclTeacher, call_text, entry, row  # noqa: E402
from verl_trace.testing.scripted import ScriptedPolicyClient  # noqa: E402
from verl_trace.tools.bfcl import ENV_KEY, BfclFunctionTool  # noqa: E402
from verl_trace.tree import LeafStatus  # noqa: E402

SP = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
ENTRY = "multi_turn_base_45"  # file system + math: find, then cd and cp in the second user turn


@pytest.fixture(scope="module")
def setup(rollout_kit):
    cfg = rollout_kit.make_config(prompt_length=32768, response_length=8192,
                                  multi_turn={"max_assistant_turns": 12, "max_user_turns": 0})
    r = row(*entry(ENTRY), "train", 0)
    tools = [BfclFunctionTool({"type": "native", "function": n}) for n in r["extra_info"]["tool_selection"]]
    return cfg, r, tools


def new_loop(cfg, tokenizer, tools, policy, seed=1):
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    r = cfg.actor_rollout_ref.rollout
    client = ScriptedPolicyClient(tokenizer, policy, prompt_length=r.prompt_length, response_length=r.response_length, seed=seed)
    return TraceToolAgentLoop(
        trainer_config=DictConfigWrap(cfg), server_manager=client, tokenizer=tokenizer, processor=None,
        dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data), hf_model_type="qwen2", tools=ToolListWrap(tools),
    )


def env_of(loop):
    return getattr(loop.result.agent_data, TOOL_STATE_ATTR)[ENV_KEY]


def reward(r, out):
    extra = {**r["extra_info"], **out.extra_fields}
    return compute_score(r["data_source"], "", r["reward_model"]["ground_truth"], extra)["score"]


@pytest.fixture(scope="module")
def trunk(setup, tokenizer):
    cfg, r, tools = setup

    async def go():
        loop = new_loop(cfg, tokenizer, tools, BfclTeacher([ENTRY]))
        return loop, await loop.run(SP, **loop_kwargs(r))

    return asyncio.run(go())


def test_the_teacher_solves_the_conversation_across_user_turns(setup, trunk):
    cfg, r, _ = setup
    loop, out = trunk
    res = loop.result
    assert res.status is LeafStatus.OK and reward(r, out) == 1.0
    assert out.extra_fields[PENDING_USER_TURNS] == 0
    calls = [c for _, _, c in out.extra_fields["bfcl_calls"]]
    assert calls == ["find(path='ResearchDocs', name='draft')", "cd(folder='ResearchDocs')",
                     "cp(source='summary_draft.docx', destination='ultimate_draft.docx')"]
    # turn 1 calls find, turn 2 ends user turn 1 and its observation is the second user message
    second_user = r["extra_info"]["user_turns"][0][0]["content"]
    assert [t.tool_calls for t in res.turns] == [1, 0, 1, 1, 0]
    assert res.turns[1].obs_text == second_user and "Done." in res.turns[1].text
    assert [s.boundary for s in res.snapshots] == [0, 1, 2, 3, 4]
    assert "ultimate_draft.docx" in env_of(loop).execute("ls", {})


def test_branches_from_one_prefix_see_only_their_own_effects(setup, trunk, tokenizer):
    cfg, r, tools = setup
    loop, _ = trunk
    snap = loop.result.snapshots[2]  # after user turn 1 (find), before the second turn's first call
    frozen_env = copy.deepcopy(snap.state[TOOL_STATE_ATTR][ENV_KEY].state())

    def branch_policy(dir_name):
        def policy(call):
            tail = call.text.rsplit("<|im_start|>user", 1)[-1]
            return call_text("mkdir", {"dir_name": dir_name}) if "<tool_call>" not in tail and "Done." not in tail else "Done."
        return policy

    async def go():
        a = new_loop(cfg, tokenizer, tools, branch_policy("alpha"))
        b = new_loop(cfg, tokenizer, tools, branch_policy("beta"))
        outs = await asyncio.gather(a.resume(snap, SP, **loop_kwargs(r)), b.resume(snap, SP, **loop_kwargs(r)))
        return a, b, outs

    a, b, (out_a, out_b) = asyncio.run(go())
    ls_a, ls_b, ls_trunk = (json.loads(env_of(x).execute("ls", {}))["current_directory_content"] for x in (a, b, loop))
    assert "alpha" in ls_a and "beta" not in ls_a
    assert "beta" in ls_b and "alpha" not in ls_b
    assert "alpha" not in ls_trunk and "beta" not in ls_trunk
    assert [c for *_, c in out_a.extra_fields["bfcl_calls"]] == ["find(path='ResearchDocs', name='draft')", "mkdir(dir_name='alpha')"]
    assert [c for *_, c in out_b.extra_fields["bfcl_calls"]] == ["find(path='ResearchDocs', name='draft')", "mkdir(dir_name='beta')"]
    # the snapshot itself is unchanged: it can seed more branches
    assert snap.state[TOOL_STATE_ATTR][ENV_KEY].state() == frozen_env
    assert reward(r, out_a) == reward(r, out_b) == 0.0  # neither did what the user asked


def test_resumed_continuations_equal_the_uninterrupted_trajectory(setup, trunk, tokenizer):
    cfg, r, tools = setup
    loop, out = trunk
    final_state = env_of(loop).state()

    async def go(snap):
        resumed = new_loop(cfg, tokenizer, tools, BfclTeacher([ENTRY]), seed=7)
        return resumed, await resumed.resume(snap, SP, **loop_kwargs(r))

    for snap in loop.result.snapshots:
        resumed, res_out = asyncio.run(go(snap))
        k = snap.response_len
        assert res_out.prompt_ids == out.prompt_ids
        assert res_out.response_ids == out.response_ids and res_out.response_mask == out.response_mask
        assert res_out.response_logprobs[:k] == out.response_logprobs[:k]
        assert res_out.extra_fields["bfcl_calls"] == out.extra_fields["bfcl_calls"]
        assert res_out.extra_fields[PENDING_USER_TURNS] == 0
        assert resumed.result.agent_data.messages == loop.result.agent_data.messages
        assert env_of(resumed).state() == final_state, f"state differs after resuming at boundary {snap.boundary}"
        assert [t.end for t in resumed.result.turns] == [t.end for t in loop.result.turns]


def test_a_conversation_cut_by_the_turn_limit_is_truncated_and_fails(setup, rollout_kit, tokenizer):
    _, r, tools = setup
    cfg = rollout_kit.make_config(prompt_length=32768, response_length=8192,
                                  multi_turn={"max_assistant_turns": 2, "max_user_turns": 0})

    async def go():
        loop = new_loop(cfg, tokenizer, tools, BfclTeacher([ENTRY]))
        return loop, await loop.run(SP, **loop_kwargs(r))

    loop, out = asyncio.run(go())
    assert loop.result.status is LeafStatus.TRUNCATED
    assert out.extra_fields[PENDING_USER_TURNS] == 1 and reward(r, out) == 0.0


@pytest.mark.parametrize("turns", ["a string", [{"role": "user", "content": "x"}], [[{"role": "assistant", "content": "x"}]]])
def test_malformed_user_turns_fail_naming_the_field(setup, tokenizer, turns):
    cfg, r, tools = setup
    bad = {**r, "extra_info": {**r["extra_info"], "user_turns": turns}}

    async def go():
        return await new_loop(cfg, tokenizer, tools, BfclTeacher([ENTRY])).run(SP, **loop_kwargs(bad))

    with pytest.raises(ValueError, match=r"extra_info\['user_turns'\]"):
        asyncio.run(go())
