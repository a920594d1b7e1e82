"""Prefix-cache accounting (verl_trace.rollout.prefix_cache): vLLM's Prometheus counters parsed
from a real exposition, the ideal shared prefix of a step's requests, and the recording client on
real tree steps (scripted policy, real tokenizer, verl's agent loop)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from verl_trace.allocation import step_budget
from verl_trace.config import TraceConfig
from verl_trace.rollout import TreePrompt, TreeRolloutRunner, build_planner
from verl_trace.rollout.prefix_cache import LedgerClient, PrefixLedger, counter_delta, parse_vllm_counters
from verl_trace.testing.scripted import ScriptedPolicyClient


def vllm_exposition(engines: dict[str, dict[str, float]]) -> str:
    """A /metrics page as vLLM's Prometheus logger writes it (same names and label names)."""
    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    counters = {name: Counter(f"vllm:{name}", name, labels, registry=reg)
                for name in ("prompt_tokens", "generation_tokens", "prefix_cache_queries", "prefix_cache_hits")}
    computed = Histogram("vllm:request_prefill_kv_computed_tokens", "new KV", labels, registry=reg, buckets=[1, 100, 1e4])
    other = Counter("vllm:num_preemptions", "ignored", labels, registry=reg)
    for engine, values in engines.items():
        for name, counter in counters.items():
            counter.labels("tiny", engine).inc(values[name])
        for tokens in values["computed"]:
            computed.labels("tiny", engine).observe(tokens)
        other.labels("tiny", engine).inc(7)
    return generate_latest(reg).decode()


def test_vllm_counters_are_summed_over_engines():
    text = vllm_exposition({
        "0": {"prompt_tokens": 1000, "generation_tokens": 50, "prefix_cache_queries": 900, "prefix_cache_hits": 640,
              "computed": [200, 160]},
        "1": {"prompt_tokens": 10, "generation_tokens": 5, "prefix_cache_queries": 10, "prefix_cache_hits": 0,
              "computed": [10]},
    })  # fmt: skip
    got = parse_vllm_counters(text)
    assert got == {"prompt_tokens": 1010, "generation_tokens": 55, "prefix_cache_queries": 910,
                   "prefix_cache_hits": 640, "prefill_computed_tokens": 370, "requests": 3}
    assert counter_delta({"prompt_tokens": 10.0}, {"prompt_tokens": 25.0, "requests": 2.0}) == {
        "prompt_tokens": 15.0, "requests": 2.0}
    assert parse_vllm_counters("# nothing here\n") == {}


def test_ledger_counts_what_earlier_requests_had_and_the_block_aligned_part():
    ledger = PrefixLedger(block_size=4)
    first = list(range(10))
    assert ledger.submit(first) == 0  # nothing earlier
    assert ledger.submit(first + [50, 51]) == 10  # an earlier prompt had the first 10
    ledger.complete(first + [60, 61, 62])  # the first request's output is now in the cache
    assert ledger.submit(first + [60, 61, 62, 70]) == 13
    assert ledger.submit([0, 1, 2, 99]) == 3
    assert ledger.submit(first) == 10  # a repeat: all of it was seen, the last token still computed
    assert ledger.requests == 5 and ledger.prompt_tokens == 10 + 12 + 14 + 4 + 10
    assert ledger.shared_tokens == 0 + 10 + 13 + 3 + 10
    # block-aligned and never the last prompt token: 8 + 12 + 0 + 8 (min(10, 9) // 4 * 4)
    assert ledger.cacheable_tokens == 8 + 12 + 0 + 8
    assert ledger.shared_prefix_fraction == pytest.approx(36 / 50)
    assert ledger.summary()["cacheable_prefix_fraction"] == pytest.approx(28 / 50)
    with pytest.raises(ValueError, match="block_size"):
        PrefixLedger(block_size=0)


@pytest.mark.parametrize("allocator", ["uniform", "tree_random"])
def test_ledger_client_records_every_request_of_a_tree_step(rollout_kit, tokenizer, allocator):
    kit = rollout_kit
    cfg = kit.make_config()
    r = cfg.actor_rollout_ref.rollout
    policy = ScriptedPolicyClient(tokenizer, kit.arithmetic_policy(), prompt_length=r.prompt_length,
                                  response_length=r.response_length, seed=3)
    ledger = PrefixLedger(block_size=16)
    runner = TreeRolloutRunner(cfg, LedgerClient(policy, ledger), tokenizer, tools=[kit.make_tool(kit.CalculatorTool)],
                               reward_fn=kit.arithmetic_reward, hf_model_type="qwen2")
    tc = TraceConfig(allocator=allocator, max_turns=r.multi_turn.max_assistant_turns)
    budget = step_budget(tc, n_roots=2, rollout_n=4, response_length=r.response_length)
    planner = build_planner(tc, n_roots=2, budget=budget, max_turns=r.multi_turn.max_assistant_turns,
                            rng=np.random.default_rng(0))
    prompts = [TreePrompt(f"p{i}", kit.task_row(10 + i, 20 + 3 * i)) for i in range(2)]
    result = asyncio.run(runner.run_step(planner, prompts, {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}))

    assert ledger.requests == len(policy.calls) and ledger.prompt_tokens == sum(n for _, n in policy.calls)
    # every leaf shares at least its prompt with an earlier request of its tree, except each tree's first
    assert ledger.shared_tokens >= sum(len(leaf.output.prompt_ids) for leaf in result.leaves) - sum(
        len(leaf.output.prompt_ids) for leaf in {leaf.uid: leaf for leaf in result.leaves}.values())
    assert 0.0 < ledger.cacheable_prefix_fraction <= ledger.shared_prefix_fraction < 1.0
