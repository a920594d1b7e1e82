"""HFLLMClient: real generation from a tiny random Qwen2 model behind verl's client interface,
on its own, through TraceToolAgentLoop (snapshot/resume), and under the tree runner."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from verl_trace.allocation import step_budget
from verl_trace.config import TraceConfig
from verl_trace.protocol import TRACE_FIELD
from verl_trace.rollout import ENTROPY_KEY, HFLLMClient, TreePrompt, TreeRolloutRunner, build_planner
from verl_trace.rollout.agent_loop import TraceToolAgentLoop
from verl_trace.testing.scripted import ScriptedPolicyClient

SP = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}


def teacher_forced(model, prompt_ids, response_ids, temperature=1.0):
    """Log-probs of the whole vocabulary at every response position, in one forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + response_ids])).logits[0].float()
    return torch.log_softmax(logits[len(prompt_ids) - 1 : -1] / temperature, dim=-1)


def teacher_forced_logprobs(model, prompt_ids, response_ids, temperature=1.0):
    logp = teacher_forced(model, prompt_ids, response_ids, temperature)
    return logp.gather(-1, torch.tensor(response_ids)[:, None])[:, 0]


def test_batched_generation_logprobs_match_a_teacher_forced_pass(tokenizer, tiny_model):
    client = HFLLMClient(tiny_model, tokenizer, prompt_length=64, response_length=24, max_batch_size=8)
    prompts = [tokenizer.encode("Compute 12 + 30 with the calculator." * (i + 1)) for i in range(5)]
    prompts.append((tokenizer.encode("Compute 1 + 2.") * 20)[:76])  # long: the vLLM-style cap leaves 12 tokens
    params = [dict(SP), dict(SP, temperature=0.7, top_k=20), dict(SP, top_p=0.9), dict(SP), dict(SP, temperature=1.3), dict(SP)]

    async def go():
        outs = await asyncio.gather(*(client.generate(f"r{i}", prompt_ids=p, sampling_params=sp) for i, (p, sp) in enumerate(zip(prompts, params))))
        await client.close()
        return outs

    outs = asyncio.run(go())
    assert client.stats.requests == 6 and client.stats.batches < 6 and client.stats.max_batch > 1
    for p, sp, out in zip(prompts, params, outs):
        cap = min(24, 64 + 24 - len(p))
        assert 1 <= len(out.token_ids) <= cap
        if len(out.token_ids) < cap:
            assert out.token_ids[-1] == tokenizer.eos_token_id  # stopped at EOS, EOS kept
        dist = teacher_forced(tiny_model, p, out.token_ids, sp["temperature"])
        tok = torch.tensor(out.token_ids)[:, None]
        torch.testing.assert_close(torch.tensor(out.log_probs), dist.gather(-1, tok)[:, 0], atol=1e-4, rtol=0)
        above = (dist > dist.gather(-1, tok)).float()  # tokens more likely than the sampled one
        if sp["top_k"] > 0:
            assert (above.sum(-1) < sp["top_k"]).all()
        if sp["top_p"] < 1.0:
            assert ((dist.exp() * above).sum(-1) < sp["top_p"]).all()
        assert out.extra_fields[ENTROPY_KEY] > 0 and out.extra_fields["global_steps"] == 0
    assert min(24, 64 + 24 - len(prompts[-1])) == 12 and len(outs[-1].token_ids) <= 12


def test_seeded_requests_are_reproducible_in_any_batch_and_greedy_is_argmax(tokenizer, tiny_model):
    client = HFLLMClient(tiny_model, tokenizer, prompt_length=64, response_length=16)
    prompt = tokenizer.encode("Compute 12 + 30 with the calculator.")
    other = tokenizer.encode("The answer is")

    async def go():
        alone = await client.generate("a", prompt_ids=prompt, sampling_params=dict(SP, seed=7))
        mixed = await asyncio.gather(
            client.generate("b", prompt_ids=other, sampling_params=dict(SP)),
            client.generate("c", prompt_ids=prompt, sampling_params=dict(SP, seed=7)),
        )
        greedy = await client.generate("d", prompt_ids=prompt, sampling_params=dict(SP, temperature=0.0))
        return alone, mixed[1], greedy

    alone, again, greedy = asyncio.run(go())
    assert alone.token_ids == again.token_ids
    with torch.no_grad():
        logits = tiny_model(torch.tensor([prompt + greedy.token_ids])).logits[0]
    assert greedy.token_ids == logits[len(prompt) - 1 : -1].argmax(-1).tolist()


def test_weight_updates_between_steps_change_generation(tokenizer):
    from verl_trace.testing.tiny import build_model

    model = build_model(tokenizer, seed=1)
    client = HFLLMClient(model, tokenizer, prompt_length=64, response_length=12)
    prompt = tokenizer.encode("Compute 12 + 30 with the calculator.")
    seeded = dict(SP, seed=3)

    def perturb(m):  # what an optimizer step does: change the weights in place
        with torch.no_grad():
            for p in m.model.layers[-1].mlp.parameters():
                p.add_(0.5 * torch.randn_like(p))

    async def go():
        before = await client.generate("a", prompt_ids=prompt, sampling_params=seeded)
        await client.update_weights(perturb)
        after = await client.generate("a", prompt_ids=prompt, sampling_params=seeded)
        return before, after

    before, after = asyncio.run(go())
    assert (before.token_ids, before.log_probs) != (after.token_ids, after.log_probs)
    assert after.extra_fields["max_global_steps"] == client.weights_version == 1
    torch.testing.assert_close(torch.tensor(after.log_probs), teacher_forced_logprobs(model, prompt, after.token_ids), atol=1e-4, rtol=0)


class ToolThenModel:
    """The first assistant turn is scripted (a calculator call, which a random model never
    writes); every later turn is generated by the real model."""

    def __init__(self, tokenizer, hf: HFLLMClient, kit):
        self.hf = hf
        r = (hf.prompt_length, hf.response_length)
        self.first = ScriptedPolicyClient(
            tokenizer, lambda c: kit.call_text("{} + {}".format(*kit.operands(c.text))), prompt_length=r[0], response_length=r[1]
        )
        self.scripted_spans: list[int] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kw):
        text = self.first.tokenizer.decode(prompt_ids)
        if text.count("<|im_start|>assistant") == 1:
            return await self.first.generate(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params)
        return await self.hf.generate(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params, **kw)


def assert_model_turns_match_teacher_forcing(model, prompt_ids, response_ids, mask, logprobs, first_turn_end):
    """Logprobs of every model-generated (mask 1) token after the scripted first turn."""
    ref = teacher_forced_logprobs(model, prompt_ids, response_ids)
    idx = [i for i in range(first_turn_end, len(response_ids)) if mask[i] == 1]
    assert idx
    torch.testing.assert_close(torch.tensor([logprobs[i] for i in idx]), ref[idx], atol=1e-4, rtol=0)


def test_real_model_through_the_agent_loop_snapshot_and_resume(rollout_kit, tokenizer, tiny_model):
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    kit = rollout_kit
    cfg = kit.make_config(prompt_length=256, response_length=96)
    hf = HFLLMClient(tiny_model, tokenizer, prompt_length=256, response_length=96)
    client = ToolThenModel(tokenizer, hf, kit)
    tools = [kit.make_tool(kit.CalculatorTool)]

    def new_loop():
        return TraceToolAgentLoop(
            trainer_config=DictConfigWrap(cfg), server_manager=client, tokenizer=tokenizer, processor=None,
            dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data), hf_model_type="qwen2", tools=ToolListWrap(tools),
        )  # fmt: skip

    async def go():
        trunk = new_loop()
        t_out = await trunk.run(SP, **kit.task_row(12, 30))
        snap = trunk.result.snapshots[1]
        branches = [new_loop() for _ in range(3)]
        b_outs = await asyncio.gather(*(b.resume(snap, SP, **kit.task_row(12, 30)) for b in branches))
        return trunk, t_out, snap, b_outs

    trunk, t_out, snap, b_outs = asyncio.run(go())
    k = snap.response_len
    first_end = trunk.result.turns[0].end
    assert first_end == k and t_out.response_mask[first_end - 1] == 0  # the observation closes turn 1
    for out in [t_out, *b_outs]:
        assert out.prompt_ids == t_out.prompt_ids
        assert out.response_ids[:k] == t_out.response_ids[:k] and out.response_mask[:k] == t_out.response_mask[:k]
        assert out.response_logprobs[:k] == t_out.response_logprobs[:k]
        assert_model_turns_match_teacher_forcing(tiny_model, out.prompt_ids, out.response_ids, out.response_mask, out.response_logprobs, first_end)
    assert len({tuple(o.response_ids[k:]) for o in b_outs}) > 1  # sampled continuations differ


def test_tree_runner_on_the_real_model(rollout_kit, tokenizer, tiny_model):
    kit = rollout_kit
    cfg = kit.make_config(prompt_length=256, response_length=64)
    hf = HFLLMClient(tiny_model, tokenizer, prompt_length=256, response_length=64, max_batch_size=16)
    tc = TraceConfig(allocator="tree_random")
    runner = TreeRolloutRunner(
        cfg, ToolThenModel(tokenizer, hf, kit), tokenizer, tools=[kit.make_tool(kit.CalculatorTool)],
        reward_fn=kit.arithmetic_reward, hf_model_type="qwen2", max_concurrency=16,
    )  # fmt: skip
    planner = build_planner(
        tc, n_roots=2, budget=step_budget(tc, n_roots=2, rollout_n=4, response_length=64), max_turns=3,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    prompts = [TreePrompt(f"p{i}", kit.task_row(10 + i, 20 + i)) for i in range(2)]
    result = asyncio.run(runner.run_step(planner, prompts, SP))
    assert len(result.leaves) == 8 and result.metrics["plan/unspent_leaves"] == 0
    assert hf.stats.max_batch > 1  # concurrent branches were decoded together
    for leaf in result.leaves:
        out = leaf.output
        first_end = result.trees[leaf.uid].prefix_response_len(out.extra_fields[TRACE_FIELD]["path"][1])
        assert_model_turns_match_teacher_forcing(tiny_model, out.prompt_ids, out.response_ids, out.response_mask, out.response_logprobs, first_end)


@pytest.mark.parametrize("field, value, match", [("repetition_penalty", 1.2, "repetition_penalty"), ("image_data", ["img"], "text-only")])
def test_unsupported_requests_fail_clearly(tokenizer, tiny_model, field, value, match):
    client = HFLLMClient(tiny_model, tokenizer, prompt_length=64, response_length=8)
    sp, kw = dict(SP), {}
    (sp if field == "repetition_penalty" else kw)[field] = value
    with pytest.raises(ValueError, match=match):
        asyncio.run(client.generate("x", prompt_ids=[1, 2, 3], sampling_params=sp, **kw))
