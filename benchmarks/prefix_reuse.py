"""The prefill that tree rollouts save, measured on a real engine: verl's vLLM replicas (vLLM's CPU
build, `.venv-vllm`) serving our agent loop on the mini search world.

    .venv-vllm/bin/python benchmarks/prefix_reuse.py --out benchmarks/results/prefix_reuse.json \\
        [--steps 3] [--prompts 8] [--leaves-per-prompt 8] [--plot docs/img/prefix_reuse.png] [--quick]

Every step gives each allocator the same questions and the same leaf budget: `uniform` spends it on
independent chains (GRPO), `tree_random` (Tree-GRPO) and `trace` grow trees whose continuations
start from turn-level prefixes. Requests go through verl's own path: `LLMServerManager` starts
`vLLMReplica`s (standalone, on the `cpu` platform of `verl_trace.cpu`), `LLMServerClient` with
verl's `GlobalRequestLoadBalancer` routes them (sticky per request id: our runner gives every run
of a tree the id `trace-{uid}`), `TreeRolloutRunner` + `TraceToolAgentLoop` run the turns, the real
`SearchTool` queries the BM25 retrieval server. The engine's prefix cache is reset before every
step, as verl's rollout resets it after every weight update.

What is read, per step, from the engines' own Prometheus counters (`/metrics`): prompt tokens,
prefix-cache queries and hits, prefill KV computed, generated tokens, prefill seconds. What the
engine could at best have reused comes from our side (`verl_trace.rollout.prefix_cache.PrefixLedger`):
`shared_prefix_fraction`, the fraction of prompt tokens that an earlier request of the same step
already had; vLLM hits whole KV blocks only and always computes a prompt's last token, so
`cacheable_prefix_fraction` is its block-aligned part. The step's wall time is the driver's clock.

Engine configurations, each on a fresh Ray cluster: one replica with block size 32 (the main
table), one replica with vLLM CPU's default block size 128, and two replicas (block 32) with
sticky routing and with `random` routing (a fresh random request id per call: verl's balancer then
has no session to keep and sends each call to the least-loaded replica, ties at random).

The model is the CPU demo's tiny Qwen2 after its supervised warm start (`verl_trace.demo`), built
here once with settings chosen for this measurement and reused from `--work-dir`: three passages
per search (`topk=3`, about 100 tokens per observation instead of the demo's ~35) so that turn
prefixes span several KV blocks; everything else as in the demo. Engine settings: float32, eager,
`VLLM_CPU_KVCACHE_SPACE=1` (GiB per replica), one OpenMP thread per engine, no core binding.
"""

from __future__ import annotations

import os

# read by `import verl` (verl's cpu platform, verl_trace.cpu) and by vLLM in every process: set first
ENGINE_ENV = {
    "VERL_TRACE_CPU": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in ENGINE_ENV.items():
    os.environ.setdefault(_key, _value)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = "verl_trace.rollout.vllm_cpu.CPUWeightSyncExtension"
ALLOCATORS = ("uniform", "tree_random", "trace")


@dataclass(frozen=True)
class EngineSetup:
    replicas: int
    block_size: int
    routing: str  # sticky | random

    @property
    def name(self) -> str:
        return f"{self.replicas}x_block{self.block_size}_{self.routing}"


def bench_settings(quick: bool, seed: int):
    """The demo's settings with three passages per search (module docstring); `--quick` also
    takes the demo's quick warm start (a smoke run: the model barely follows the protocol)."""
    from verl_trace.demo.settings import make_settings

    overrides = {"task": {"topk": 3, "prompt_length": 128, "response_length": 640, "max_tool_response_chars": 2048},
                 "model": {"max_positions": 1024}}
    return make_settings(quick=quick, allocator="uniform", seed=seed, overrides=overrides)


def trace_config(allocator: str, settings):
    """The allocator's TRACE section as the demo configures it, with the candidate pool equal to the
    roots (`pool_factor=1`): every allocator gets exactly the same questions."""
    from verl_trace.demo.settings import make_settings

    return make_settings(allocator=allocator, seed=settings.seed,
                         overrides={"trace": {"allocation": {"pool_factor": 1.0}}}).trace


def verl_config(settings, model_dir: Path, setup: EngineSetup):
    """verl's trainer config (composed as `main_trace` composes it) for standalone vLLM replicas."""
    from verl_trace.trainer.hydra_config import compose_config

    task = settings.task
    rollout = "actor_rollout_ref.rollout"
    return compose_config(overrides=[
        f"actor_rollout_ref.model.path={model_dir}", "trainer.device=cpu",
        f"data.max_prompt_length={task.prompt_length}", f"data.max_response_length={task.response_length}",
        f"{rollout}.name=vllm", f"{rollout}.nnodes=1", f"{rollout}.n_gpus_per_node={setup.replicas}",
        f"{rollout}.tensor_model_parallel_size=1", f"{rollout}.max_model_len={task.prompt_length + task.response_length}",
        f"{rollout}.max_num_batched_tokens=4096", f"{rollout}.enforce_eager=True", f"{rollout}.dtype=float32",
        f"{rollout}.enable_prefix_caching=True", f"{rollout}.disable_log_stats=False",
        f"{rollout}.load_format=auto",  # verl's default, dummy, expects a weight sync from a trainer
        f"++{rollout}.enable_sleep_mode=False", f"{rollout}.free_cache_engine=False",
        f"++{rollout}.engine_kwargs.vllm.block_size={setup.block_size}",
        f"++{rollout}.engine_kwargs.vllm.worker_extension_cls={EXTENSION}",
        f"{rollout}.multi_turn.format=hermes", f"{rollout}.multi_turn.max_assistant_turns={task.max_turns}",
        f"{rollout}.multi_turn.max_user_turns={task.max_turns}", f"{rollout}.multi_turn.max_parallel_calls=1",
        f"{rollout}.multi_turn.max_tool_response_length={task.max_tool_response_chars}",
        f"{rollout}.multi_turn.tool_response_truncate_side=right",
    ])  # fmt: skip


def start_ray(gpus: int, engine_logs: bool, log, attempts: int = 3) -> None:
    """A fresh local cluster per setup (its own temp dir; only what it started is shut down). Ray
    gives its raylet a fixed 30 s to register, which an overloaded shared machine can miss: retry."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=8, num_gpus=gpus, include_dashboard=False, log_to_driver=engine_logs,
                     _temp_dir=f"/tmp/pr-ray-{os.getpid()}")
            return
        except Exception as exc:  # Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(exc):
                raise
            log(f"Ray did not start ({exc}); retrying ({attempt}/{attempts})")
            time.sleep(10)


def random_routing_balancer():
    """verl's balancer with a fresh random id per call: no sticky session, least-loaded replica."""
    from verl.workers.rollout.router import GlobalRequestLoadBalancer

    class RandomRoutingBalancer(GlobalRequestLoadBalancer):
        def acquire_server(self, request_id: str, **extra: Any):
            return super().acquire_server(f"random-{uuid.uuid4().hex}", **extra)

    return RandomRoutingBalancer


def step_questions(questions: list, steps: int, per_step: int, seed: int) -> list[list]:
    """Disjoint question sets, one per step (+ one for the warm-up step first)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(questions))
    need = (steps + 1) * per_step
    if need > len(questions):
        raise ValueError(f"{steps} steps x {per_step} prompts need {need} questions; the split has {len(questions)}")
    return [[questions[i] for i in order[k * per_step:(k + 1) * per_step]] for k in range(steps + 1)]


async def run_setup(setup: EngineSetup, settings, model_dir: Path, retrieve_url: str, question_sets: list[list],
                    args, log) -> dict[str, Any]:
    """Start the replicas, run every allocator on every step, return per-allocator results."""
    import ray
    from transformers import AutoTokenizer
    from verl.workers.rollout.llm_server import LLMServerManager

    from verl_trace.allocation import Budget
    from verl_trace.demo.demonstrations import make_search_tool
    from verl_trace.predictor import build_featurizer, build_predictor
    from verl_trace.rewards import qa_em
    from verl_trace.rollout import TreeRolloutRunner, build_planner, compute_score_reward
    from verl_trace.rollout.prefix_cache import LedgerClient, PrefixLedger, counter_delta, read_all_counters
    from verl_trace.tools.search_tool import close_shared_sessions

    config = verl_config(settings, model_dir, setup)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    start_ray(setup.replicas, args.engine_logs, log)
    t0 = time.perf_counter()
    manager = await LLMServerManager.create(
        config=config, load_balancer_cls=random_routing_balancer() if setup.routing == "random" else None)
    startup = time.perf_counter() - t0
    addresses = list(manager.server_addresses)
    log(f"{setup.name}: {len(addresses)} replica(s) up in {startup:.0f}s")
    client = LedgerClient(manager.get_client(), PrefixLedger(setup.block_size))
    task = settings.task
    runner = TreeRolloutRunner(config, client, tokenizer, tools=[make_search_tool(retrieve_url, task.topk)],
                               reward_fn=compute_score_reward(qa_em.compute_score, tokenizer), hf_model_type="qwen2",
                               max_concurrency=args.max_concurrency, run_timeout=600.0)
    sampling = {"temperature": args.temperature, "top_p": 1.0, "top_k": -1, "logprobs": True}
    configs = {a: trace_config(a, settings) for a in ALLOCATORS}
    predictors = {a: build_predictor(c.predictor) for a, c in configs.items() if a == "trace"}
    featurizers = {a: build_featurizer(configs[a].predictor, task.max_turns) for a in predictors}
    n_prompts = len(question_sets[0])
    leaves = n_prompts * args.leaves_per_prompt
    steps: dict[str, list[dict[str, Any]]] = {a: [] for a in ALLOCATORS}
    try:
        for k, questions in enumerate(question_sets):
            order = ["uniform"] if k == 0 else list(ALLOCATORS)  # step 0: an unmeasured warm-up
            for alloc in order:
                cfg = configs[alloc]
                planner = build_planner(cfg, n_roots=n_prompts, budget=Budget(leaves=leaves), max_turns=task.max_turns,
                                        predictor=predictors.get(alloc), featurizer=featurizers.get(alloc),
                                        rng=np.random.default_rng([settings.seed, k]))
                prompts = [q.prompt(f"s{k}-{alloc}-{i}") for i, q in enumerate(questions)]
                await asyncio.gather(*(r.clear_kv_cache() for r in manager.rollout_replicas))
                client.ledger = PrefixLedger(setup.block_size)
                before = await read_all_counters(addresses)
                load = os.getloadavg()[0]
                t_step = time.perf_counter()
                result = await runner.run_step(planner, prompts, sampling)
                seconds = time.perf_counter() - t_step
                after = await read_all_counters(addresses)
                if alloc in predictors:
                    anchors, outcomes = result.training_batch()
                    if len(anchors):
                        predictors[alloc].update(anchors, outcomes)
                if k == 0:
                    log(f"{setup.name}: warm-up step {seconds:.1f}s")
                    continue
                per_replica = {a: counter_delta(before[a], after[a]) for a in addresses}
                row = step_row(per_replica, client.ledger, result, seconds, load)
                steps[alloc].append(row)
                log(f"{setup.name} step {k} {alloc:11s}: {seconds:5.1f}s, hit rate {row['prefix_cache_hit_rate']:.3f} "
                    f"(shared {row['shared_prefix_fraction']:.3f}, cacheable {row['cacheable_prefix_fraction']:.3f}), "
                    f"prefill/leaf {row['prefill_tokens_computed_per_leaf']:.0f}, load {load:.1f}")
    finally:
        await close_shared_sessions()
        ray.shutdown()
    return {"setup": {"replicas": setup.replicas, "block_size": setup.block_size, "routing": setup.routing},
            "startup_seconds": startup, "allocators": {a: summarize(rows) for a, rows in steps.items()}}


def step_row(per_replica: dict[str, dict[str, float]], ledger, result, seconds: float, load: float) -> dict[str, Any]:
    engine = {k: sum(d.get(k, 0.0) for d in per_replica.values()) for k in next(iter(per_replica.values()))}
    leaves = len(result.leaves)
    computed = engine["prompt_tokens"] - engine["prefix_cache_hits"]
    return {
        "leaves": leaves,
        "requests": engine["requests"],
        "prompt_tokens": engine["prompt_tokens"],
        "prefix_cache_queries": engine["prefix_cache_queries"],
        "prefix_cache_hits": engine["prefix_cache_hits"],
        "prefix_cache_hit_rate": engine["prefix_cache_hits"] / max(engine["prefix_cache_queries"], 1.0),
        "prefill_tokens_computed": computed,
        "prefill_tokens_computed_per_leaf": computed / max(leaves, 1),
        "prefill_kv_computed_tokens": engine["prefill_computed_tokens"],
        "prefill_seconds": engine["prefill_seconds"],
        "generation_tokens": engine["generation_tokens"],
        "ledger": ledger.summary(),
        "shared_prefix_fraction": ledger.shared_prefix_fraction,
        "cacheable_prefix_fraction": ledger.cacheable_prefix_fraction,
        "requests_per_replica": {a: d.get("requests", 0.0) for a, d in per_replica.items()},
        "reward_mean": float(np.mean([leaf.output.reward_score or 0.0 for leaf in result.leaves])),
        "branch_points": result.metrics.get("trace/branch_points", 0.0),
        "step_seconds": seconds,
        "load_average_1min": load,
    }


def _sum(rows: list[dict[str, Any]], key: str, idx) -> float:
    return float(sum(rows[i]["ledger"][key[7:]] if key.startswith("ledger.") else rows[i][key] for i in idx))


def hit_rate(rows, idx) -> float:
    return _sum(rows, "prefix_cache_hits", idx) / max(_sum(rows, "prefix_cache_queries", idx), 1.0)


def prefill_per_leaf(rows, idx) -> float:
    return _sum(rows, "prefill_tokens_computed", idx) / max(_sum(rows, "leaves", idx), 1.0)


def fraction(rows, idx, key: str) -> float:
    return _sum(rows, f"ledger.{key}", idx) / max(_sum(rows, "ledger.prompt_tokens", idx), 1.0)


def paired_ci(stat, n_steps: int, seed: int = 0, reps: int = 2000) -> list[float]:
    """95% percentile bootstrap interval of ``stat(step_indices)`` over the measured steps. Every
    allocator and setup saw the same questions at step k, so one resampled index set serves all
    of them (paired)."""
    rng = np.random.default_rng(seed)
    values = [stat(rng.integers(0, n_steps, n_steps)) for _ in range(reps)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the measured steps (ratios of sums, with paired-bootstrap 95% intervals over
    steps), the median step time, and every step."""
    if not rows:
        return {}
    every = range(len(rows))
    total = {k: _sum(rows, k, every) for k in ("leaves", "requests", "prompt_tokens", "prefix_cache_queries",
                                               "prefix_cache_hits", "prefill_tokens_computed", "generation_tokens",
                                               "prefill_seconds")}
    shared, cacheable = fraction(rows, every, "shared_tokens"), fraction(rows, every, "cacheable_tokens")
    rate = hit_rate(rows, every)
    times = [r["step_seconds"] for r in rows]
    n = len(rows)
    return {
        **total,
        "prefix_cache_hit_rate": rate,
        "shared_prefix_fraction": shared,
        "cacheable_prefix_fraction": cacheable,
        "hit_rate_over_shared": rate / shared if shared else None,
        "hit_rate_over_cacheable": rate / cacheable if cacheable else None,
        "prefill_tokens_computed_per_leaf": prefill_per_leaf(rows, every),
        "prompt_tokens_per_leaf": total["prompt_tokens"] / max(total["leaves"], 1.0),
        "ledger_prompt_tokens": _sum(rows, "ledger.prompt_tokens", every),
        "ci95": {
            "prefix_cache_hit_rate": paired_ci(lambda i: hit_rate(rows, i), n),
            "hit_rate_over_shared": paired_ci(lambda i: hit_rate(rows, i) / fraction(rows, i, "shared_tokens"), n),
            "prefill_tokens_computed_per_leaf": paired_ci(lambda i: prefill_per_leaf(rows, i), n),
        },
        "step_seconds": {"median": statistics.median(times), "min": min(times), "max": max(times)},
        "steps": rows,
    }


def goals(runs: dict[str, dict[str, Any]], main: str) -> dict[str, Any]:
    """The issue's targets: each with the measured value, its paired-bootstrap 95% interval over
    steps, and whether the value meets the target."""
    one = runs[main]["allocators"]
    steps = {name: {a: r["steps"] for a, r in run["allocators"].items()} for name, run in runs.items()}
    rows1 = steps[main]
    n = len(rows1["trace"])
    out: dict[str, Any] = {}
    trace = one["trace"]
    out["trace_hit_rate_over_shared_prefix_fraction"] = {
        "target": ">= 0.9", "value": trace["hit_rate_over_shared"], "ci95": trace["ci95"]["hit_rate_over_shared"],
        "met": trace["hit_rate_over_shared"] >= 0.9, "over_cacheable_prefix_fraction": trace["hit_rate_over_cacheable"]}

    def prefill_ratio(i):
        return prefill_per_leaf(rows1["trace"], i) / prefill_per_leaf(rows1["uniform"], i)

    ratio = prefill_ratio(range(n))
    out["trace_prefill_per_leaf_over_uniform"] = {"target": "<= 0.5", "value": ratio, "ci95": paired_ci(prefill_ratio, n),
                                                  "met": ratio <= 0.5}
    by_routing = {run["setup"]["routing"]: name for name, run in runs.items() if run["setup"]["replicas"] == 2}
    if "sticky" in by_routing:
        rows2 = steps[by_routing["sticky"]]
        gap = {}
        for a in one:
            def rel(i, a=a):
                return abs(hit_rate(rows2[a], i) - hit_rate(rows1[a], i)) / hit_rate(rows1[a], i)
            gap[a] = {"value": rel(range(n)), "ci95": paired_ci(rel, n)}
        out["two_replicas_sticky_hit_rate_relative_gap"] = {"target": "<= 0.1", "value": gap,
                                                            "met": all(g["value"] <= 0.1 for g in gap.values())}
    if "random" in by_routing:
        rows2 = steps[by_routing["random"]]
        loss = {}
        for a in one:
            def drop(i, a=a):
                return hit_rate(rows1[a], i) - hit_rate(rows2[a], i)
            loss[a] = {"value": drop(range(n)), "ci95": paired_ci(drop, n)}
        out["two_replicas_random_hit_rate_loss"] = loss
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    main = runs[report["main_setup"]]["allocators"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(ALLOCATORS))
    w = 0.27
    ax1.bar(x - w, [main[a]["shared_prefix_fraction"] for a in ALLOCATORS], w, label="shared prefix (ideal)", color="#c7d7ea")
    ax1.bar(x, [main[a]["cacheable_prefix_fraction"] for a in ALLOCATORS], w, label="block-aligned ideal", color="#7fa7d1")
    ax1.bar(x + w, [main[a]["prefix_cache_hit_rate"] for a in ALLOCATORS], w, label="vLLM hit rate", color="#1f5fa8")
    ax1.set_xticks(x, ALLOCATORS)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("fraction of prompt tokens")
    ax1.set_title(f"prefix cache, 1 replica, block {runs[report['main_setup']]['setup']['block_size']}")
    ax1.legend(fontsize=8, loc="lower right")
    labels, values = [], []
    for run in runs.values():
        s = run["setup"]
        for a in ALLOCATORS:
            if a in run["allocators"] and run["allocators"][a]:
                labels.append(f"{a}\n{s['replicas']}x b{s['block_size']} {s['routing']}")
                values.append(run["allocators"][a]["prefill_tokens_computed_per_leaf"])
    ax2.barh(np.arange(len(values)), values, color="#1f5fa8")
    ax2.set_yticks(np.arange(len(values)), labels, fontsize=6)
    ax2.invert_yaxis()
    ax2.set_xlabel("prefill tokens computed per leaf (engine)")
    ax2.set_title("what the engine computed")
    fig.suptitle(f"{report['engine']}: same prompts and leaf budget per step", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    ap.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "prefix_reuse", help="warm start, logs")
    ap.add_argument("--steps", type=int, default=10, help="measured steps per allocator (after one warm-up step)")
    ap.add_argument("--prompts", type=int, default=16, help="questions (tree roots) per step")
    ap.add_argument("--leaves-per-prompt", type=int, default=8, help="leaf budget per question")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-concurrency", type=int, default=64, help="agent-loop runs in flight")
    ap.add_argument("--block-sizes", default="32,128", help="KV block sizes (1 replica each); the first is the main one")
    ap.add_argument("--two-replicas", default="sticky,random", help="routings measured with 2 replicas ('' for none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=None, help="PNG of the main comparison")
    ap.add_argument("--engine-logs", action="store_true", help="show the Ray actors' (vLLM's) logs")
    ap.add_argument("--quick", action="store_true", help="smoke run: demo's quick warm start, 1 step, 2 prompts")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.prompts, args.leaves_per_prompt = 1, 2, 4
    try:
        blocks = [int(b) for b in args.block_sizes.split(",") if b]
        routings = [r for r in args.two_replicas.split(",") if r]
        if not blocks or any(b % 32 or b < 32 for b in blocks):
            raise ValueError(f"--block-sizes {args.block_sizes!r}: multiples of 32 (vLLM's CPU attention), at least one")
        if set(routings) - {"sticky", "random"}:
            raise ValueError(f"--two-replicas {args.two_replicas!r}: choose from sticky, random")
        if min(args.steps, args.prompts, args.leaves_per_prompt) < 1:
            raise ValueError("--steps, --prompts and --leaves-per-prompt must be >= 1")
    except ValueError as exc:
        ap.error(str(exc))
    setups = [EngineSetup(1, b, "sticky") for b in blocks] + [EngineSetup(2, blocks[0], r) for r in routings]

    from verl_trace.demo import warm_start
    from verl_trace.demo.progress import DemoProgress
    from verl_trace.demo.world import MINI_DIR, load_split
    from verl_trace.tools.retrieval_server.process import RetrievalServerProcess

    settings = bench_settings(args.quick, args.seed)
    work = args.work_dir / ("quick" if args.quick else "full")
    question_sets = step_questions(load_split("train"), args.steps, args.prompts, args.seed)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    runs: dict[str, dict[str, Any]] = {}
    with RetrievalServerProcess(MINI_DIR / "corpus.jsonl", work / "retrieval_server.log") as server, \
            DemoProgress(enabled=False) as progress:
        warm = warm_start.prepare(settings, work / "warm_start", server.retrieve_url, progress)
        log(f"warm start {warm.path} (teacher accuracy {warm.info.get('teacher_accuracy', float('nan')):.2f})")
        for setup in setups:
            runs[setup.name] = asyncio.run(run_setup(setup, settings, warm.path, server.retrieve_url, question_sets,
                                                     args, log))
    main_setup = setups[0].name
    report = {
        "engine": f"vllm-cpu {version('vllm-cpu')}",
        "verl": version("verl"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"steps": args.steps, "prompts": args.prompts, "leaves_per_prompt": args.leaves_per_prompt,
                     "temperature": args.temperature, "seed": args.seed, "topk": settings.task.topk,
                     "max_turns": settings.task.max_turns, "engine_env": ENGINE_ENV, "quick": args.quick,
                     "warm_start": {k: warm.info.get(k) for k in ("teacher_accuracy", "sft_steps", "parameters")}},
        "main_setup": main_setup,
        "allocators": {a: {k: v for k, v in r.items() if k != "steps"} for a, r in runs[main_setup]["allocators"].items()},
        "runs": runs,
        "goals": goals(runs, main_setup),
        "seconds": time.perf_counter() - t0,
        "cpu_count": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, allow_nan=False))
    if args.plot:
        plot(report, args.plot)
    log(f"wrote {args.out}")
    print(json.dumps({"allocators": {a: {k: report["allocators"][a][k] for k in (
        "prompt_tokens", "prefix_cache_hit_rate", "shared_prefix_fraction", "cacheable_prefix_fraction",
        "prefill_tokens_computed_per_leaf")} for a in ALLOCATORS}, "goals": report["goals"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
