"""Rollout-side costs on CPU: HF client throughput vs batch size, snapshot capture/restore vs
sequence length, and the tree runner's own overhead per leaf (scripted policy, so the engine costs
nothing and what is left is verl's agent loop, snapshots, grafting and planning).

    PYTHONPATH=$PWD nice python benchmarks/rollout_bench.py [--repeats 3] [--seed 0] [--sections client,snapshots,runner]

Prints markdown tables (medians over ``--repeats``); docs/integration.md quotes a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import re
import statistics
import time

import numpy as np
import torch
from omegaconf import OmegaConf

CORPUS = [
    "Compute 12 + 30 with the calculator.",
    '<tool_call>{"name": "calculator", "arguments": {"expression": "12 + 30"}}</tool_call>',
    "The answer is <answer>42</answer>",
] * 8


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_client(tok, model, repeats: int, seed: int) -> None:
    from verl_trace.rollout import HFLLMClient

    prompt = tok.encode("Compute 12 + 30 with the calculator. " * 3)
    sp = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": 64}
    print("\n### HFLLMClient: 32 concurrent requests x 64 new tokens (tiny Qwen2, hidden 64, 2 layers)\n")
    print("| max_batch_size | decode_threads | median s | tokens/s | speed-up vs batch 1 |")
    print("|---:|---:|---:|---:|---:|")
    base = None
    for threads in (1, None):
        for bs in (1, 8, 32):
            client = HFLLMClient(model, tok, prompt_length=256, response_length=64, max_batch_size=bs, seed=seed, decode_threads=threads)
            burst = functools.partial(_burst, client, prompt, sp, seed)
            ntok = burst()  # warm-up, and the token count (seeded: the same every run)
            sec = median_time(burst, repeats)
            base = sec if base is None else base
            print(f"| {bs} | {threads if threads else 'torch default'} | {sec:.2f} | {ntok / sec:.0f} | {base / sec:.1f}x |")


def _burst(client, prompt, sp, seed) -> int:
    async def once():
        outs = await asyncio.gather(*(client.generate(f"r{i}", prompt_ids=prompt, sampling_params=dict(sp, seed=seed + i)) for i in range(32)))
        return sum(len(o.token_ids) for o in outs)

    return asyncio.run(once())


def bench_snapshots(repeats: int) -> None:
    from verl.experimental.agent_loop.tool_agent_loop import AgentData

    from verl_trace.rollout import AgentSnapshot

    print("\n### AgentSnapshot: capture + restore, by running sequence length\n")
    print("| tokens | capture ms | restore ms |")
    print("|---:|---:|---:|")
    for n in (1_000, 4_000, 16_000, 64_000):
        ad = AgentData(messages=[{"role": "user", "content": "x " * (n // 2)}], image_data=None, video_data=None,
                       audio_data=None, mm_processor_kwargs=None, metrics={}, request_id="r", tools_kwargs={})  # fmt: skip
        ad.prompt_ids = list(range(n))
        ad.response_mask = [1] * (n // 2)
        ad.response_logprobs = [-0.5] * (n // 2)
        ad.trace_turns, ad.trace_open = [], None
        cap = median_time(functools.partial(AgentSnapshot.capture, ad, 1), repeats * 5)
        res = median_time(functools.partial(AgentSnapshot.capture(ad, 1).restore_into, ad), repeats * 5)
        print(f"| {n} | {cap * 1e3:.2f} | {res * 1e3:.2f} |")


def bench_runner(tok, repeats: int, seed: int) -> None:
    from verl.tools.base_tool import BaseTool
    from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

    class Calculator(BaseTool):
        async def execute(self, instance_id, parameters, **kwargs):
            a, b = (int(x) for x in re.findall(r"-?\d+", parameters["expression"])[:2])
            return ToolResponse(text=str(a + b)), 0.0, {}

    schema = OpenAIFunctionToolSchema.model_validate({"type": "function", "function": {"name": "calculator", "description": "add",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        tool = Calculator(config={"type": "native"}, tool_schema=schema)

    def policy(call):
        a, b = (int(x) for x in re.search(r"Compute (\d+) \+ (\d+)", call.text).groups())
        if call.turn < 2 and call.rng.random() < 0.7:
            return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{a} + {b}"}}}}</tool_call>'
        return f"<answer>{a + b + int(call.rng.integers(0, 2))}</answer>"

    async def reward(output, row):
        m = re.findall(r"<answer>(\d+)</answer>", tok.decode(output.response_ids))
        return float(bool(m) and m[-1] == row["answer"])

    cfg = OmegaConf.create({"actor_rollout_ref": {"rollout": {"prompt_length": 1024, "response_length": 512, "full_determinism": False,
        "multi_turn": {"format": "hermes", "max_user_turns": 4, "max_assistant_turns": 3, "max_parallel_calls": 1,
                       "max_tool_response_length": 256, "tool_response_truncate_side": "middle"}}}, "data": {"apply_chat_template_kwargs": {}}})  # fmt: skip
    n_prompts, per_prompt = 16, 8
    print(f"\n### TreeRolloutRunner overhead: {n_prompts} prompts x {per_prompt} leaves, scripted policy (no engine cost)\n")
    print("| allocator | median step s | ms per leaf | planner s | branch points | tokens saved |")
    print("|---|---:|---:|---:|---:|---:|")
    for allocator in ("uniform", "tree_random", "trace"):
        stats: dict[str, float] = {}
        step = functools.partial(_runner_step, tok, cfg, tool, policy, reward, allocator, n_prompts, per_prompt, seed, stats)
        sec = median_time(step, repeats)
        leaves = stats["trace/leaves"]
        print(f"| {allocator} | {sec:.2f} | {sec / leaves * 1e3:.1f} | {stats['trace/planner_seconds']:.3f} | "
              f"{stats['trace/branch_points']:.0f} | {stats['trace/tokens_saved']:.0f} |")  # fmt: skip


def _runner_step(tok, cfg, tool, policy, reward, allocator, n_prompts, per_prompt, seed, stats) -> None:
    from verl_trace.allocation import allocator_class, step_budget
    from verl_trace.config import TraceConfig
    from verl_trace.predictor import build_featurizer, build_predictor
    from verl_trace.rollout import TreePrompt, TreeRolloutRunner, build_planner
    from verl_trace.testing.scripted import ScriptedPolicyClient

    tc = TraceConfig(allocator=allocator)
    client = ScriptedPolicyClient(tok, policy, prompt_length=1024, response_length=512, seed=seed)
    runner = TreeRolloutRunner(cfg, client, tok, tools=[tool], reward_fn=reward, hf_model_type="qwen2")
    predictor = build_predictor(tc.predictor) if allocator_class(allocator).needs_predictor else None
    featurizer = build_featurizer(tc.predictor, 3) if predictor else None
    budget = step_budget(tc, n_roots=n_prompts, rollout_n=per_prompt, response_length=512)
    planner = build_planner(tc, n_roots=n_prompts, budget=budget, max_turns=3, predictor=predictor, featurizer=featurizer,
                            rng=np.random.default_rng(seed))  # fmt: skip
    prompts = [TreePrompt(f"p{i}", {"raw_prompt": [{"role": "user", "content": f"Compute {i} + {2 * i + 1}."}], "answer": str(3 * i + 1)})
               for i in range(n_prompts)]  # fmt: skip
    res = asyncio.run(runner.run_step(planner, prompts, {"temperature": 1.0, "logprobs": True}))
    stats.update(res.metrics)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sections", default="client,snapshots,runner", help="comma-separated subset to run")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    from verl_trace.testing.tiny import build_model, build_tokenizer

    tok = build_tokenizer(CORPUS, vocab_size=512)
    model = build_model(tok, seed=args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads by default; seed {args.seed}, median of {args.repeats}")
    if "client" in sections:
        bench_client(tok, model, args.repeats, args.seed)
    if "snapshots" in sections:
        bench_snapshots(args.repeats)
    if "runner" in sections:
        bench_runner(tok, args.repeats, args.seed)


if __name__ == "__main__":
    main()
