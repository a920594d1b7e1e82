"""Training-like runs of every allocator on one regime and seed, their aggregation over seeds,
and the production-scale timing of the planner + predictor."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from verl_trace.allocation import ALLOCATORS as REGISTRY
from verl_trace.allocation import build_allocator, new_planner, pool_size, step_budget
from verl_trace.config import AllocatorConfig, BudgetConfig, TraceConfig
from verl_trace.gcfreeze import freeze_startup_objects
from verl_trace.predictor import OraclePredictor, build_predictor

from .env import Environment, PromptSet
from .executor import SlotExecutor
from .gcclock import CLOCK as GC
from .metrics import step_metrics
from .quality import evaluate_predictors
from .regime import Regime

ALLOCATORS = tuple(REGISTRY)  # every allocator, the oracle included (its order seeds the environments)
STEP_FIELDS = (
    "effective_sample_ratio",
    "mixed_root_ratio",
    "informative_per_1k_tokens",
    "generated_tokens",
    "makespan_s",
    "roots_with_signal",
    "plan_ms",
)


@dataclass(frozen=True)
class Settings:
    """Benchmark-wide planner settings, the same for every allocator."""

    schedule: str = "pipelined"
    ready_fraction: float = 1.0
    allocation: tuple[tuple[str, Any], ...] = ()  # extra trace.allocation overrides (name, value)


def make_config(name: str, regime: Regime, settings: Settings, seed: int) -> TraceConfig:
    alloc = {"pool_factor": regime.run.pool_factor, **dict(settings.allocation)}
    return TraceConfig(
        allocator=name,
        schedule=settings.schedule,
        ready_fraction=settings.ready_fraction,
        max_turns=regime.turns.max_turns,
        seed=seed,
        budget=BudgetConfig(leaves_per_prompt=regime.run.leaves_per_prompt),
        allocation=AllocatorConfig(**alloc),
    )


def pools(regime: Regime, prompts: PromptSet, seed: int) -> list[np.ndarray]:
    """Candidate pool of every step: the training prompts in shuffled epochs (so prompts recur),
    ``pool_factor * batch`` per step, no prompt twice in one pool. The same for every allocator."""
    rng = np.random.default_rng([seed, 5])
    size = pool_size(regime.run.pool_factor, regime.run.batch_prompts)
    stream: list[int] = []
    out = []
    for _ in range(regime.run.steps):
        pool: list[int] = []
        while len(pool) < size:
            if not stream:
                stream = list(rng.permutation(prompts.train))
            i = stream.pop(0)
            if i not in pool:
                pool.append(int(i))
            else:
                stream.append(i)
        out.append(np.array(pool))
    return out


def run_allocator(regime: Regime, seed: int, name: str, settings: Settings, evaluate: bool = False) -> dict[str, Any]:
    """Run ``regime.run.steps`` steps of one allocator; per-step metrics (and predictor quality)."""
    run = regime.run
    prompts = PromptSet(regime, seed)
    env = Environment(regime, prompts, seed=seed * 1000 + ALLOCATORS.index(name))
    cfg = make_config(name, regime, settings, seed)
    allocator = build_allocator(cfg)
    predictor = None
    if allocator.simulator_only:
        predictor = build_predictor(cfg.predictor, oracle=True)
    elif allocator.needs_predictor:
        predictor = build_predictor(cfg.predictor)
    budget = step_budget(cfg, n_roots=run.batch_prompts)
    leaves = budget.leaves
    executor = SlotExecutor(env, max(1, round(regime.latency.slots_per_leaf * leaves)))
    steps, seen = [], set()
    for step, pool_ids in enumerate(pools(regime, prompts, seed)):
        pool = [env.root(int(i), step, f"s{step}/p{i}") for i in pool_ids]
        planner = new_planner(
            cfg, allocator, n_roots=run.batch_prompts, budget=budget, max_turns=regime.turns.max_turns,
            predictor=predictor, rng=np.random.default_rng([seed, step, 7]),
        )
        res = executor.run(planner, pool)
        trees = list(res.trees.values())
        m = step_metrics(trees, allocator.estimator, cfg.advantage)
        update_s = 0.0
        if predictor is not None:
            t0 = time.perf_counter()
            batch, y = planner.training_batch()
            predictor.update(batch, y)
            update_s = time.perf_counter() - t0
        seen.update(env.prompt_of[t.uid] for t in trees)
        pm = planner.metrics()
        steps.append(
            {
                "leaves": m.leaves,
                "budget_leaves": leaves,
                "generated_tokens": m.generated_tokens,
                "effective_sample_ratio": m.effective_sample_ratio,
                "mixed_root_ratio": m.mixed_root_ratio,
                "informative_per_1k_tokens": m.informative_per_1k_tokens,
                "comparisons": m.comparisons,
                "roots_with_signal": m.mixed_roots,
                "makespan_s": res.makespan_s,
                "plan_ms": 1000 * res.plan_cpu_s,  # thread CPU time
                "update_ms": 1000 * update_s,
                "fallback_leaves": pm["plan/fallback_leaves"],
            }
        )
        for t in pool:
            env.forget(t.uid)
    out: dict[str, Any] = {"steps": steps}
    if evaluate and name == "trace" and predictor is not None:
        preds = {"beta": predictor.beta, "shared": predictor.shared, "hybrid": predictor, "oracle": OraclePredictor()}
        out["predictors"] = evaluate_predictors(env, preds, run.steps, seen, seed)
    return out


def run_seed(regime: Regime, seed: int, settings: Settings, allocators: Sequence[str] = ALLOCATORS) -> dict[str, Any]:
    torch.set_num_threads(1)
    return {a: run_allocator(regime, seed, a, settings, evaluate=True) for a in allocators}


# ---------------------------------------------------------------------- aggregation
def _ms(xs: Sequence[float]) -> dict[str, float]:
    xs = [float(x) for x in xs]
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def _seed_row(st: list[dict[str, Any]], uni: list[dict[str, Any]] | None) -> dict[str, float]:
    r = {f: statistics.fmean(s[f] for s in st) for f in STEP_FIELDS}
    if uni is not None:
        r["makespan_vs_uniform"] = statistics.fmean(s["makespan_s"] / u["makespan_s"] for s, u in zip(st, uni))
    return r


def aggregate(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per seed, average each metric over steps; then mean and std over seeds. Makespan is divided
    by uniform's makespan of the same seed and step before averaging. ``second_half`` repeats the
    metrics over the second half of the steps only (the predictor past its cold start)."""
    out: dict[str, Any] = {}
    fields = (*STEP_FIELDS, "makespan_vs_uniform")
    for a in per_seed[0]:
        rows, late = [], []
        for seed_res in per_seed:
            st = seed_res[a]["steps"]
            uni = seed_res["uniform"]["steps"] if "uniform" in seed_res else None
            h = len(st) // 2
            rows.append(_seed_row(st, uni))
            late.append(_seed_row(st[h:], None if uni is None else uni[h:]))
        leaves = [s["leaves"] for seed_res in per_seed for s in seed_res[a]["steps"]]
        budget = [s["budget_leaves"] for seed_res in per_seed for s in seed_res[a]["steps"]]
        res: dict[str, Any] = {
            "estimator": REGISTRY[a].estimator,
            "leaves": leaves[0] if len(set(leaves)) == 1 else statistics.fmean(leaves),
            "budget_leaves": budget[0],
            "leaves_equal_budget": leaves == budget,
            "fallback_leaves": sum(s["fallback_leaves"] for seed_res in per_seed for s in seed_res[a]["steps"]),
        }
        for f in fields:
            if f in rows[0]:
                res[f] = _ms([r[f] for r in rows])
        res["second_half"] = {f: _ms([r[f] for r in late]) for f in fields if f in late[0]}
        out[a] = res
    return out


def aggregate_predictors(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    evals = [s["trace"]["predictors"] for s in per_seed if "predictors" in s.get("trace", {})]
    if not evals:
        return {}
    out: dict[str, Any] = {}
    for name in evals[0]:
        splits = {}
        for split in evals[0][name]:
            splits[split] = {
                k: _ms([e[name][split][k] for e in evals if np.isfinite(e[name][split][k])] or [float("nan")])
                for k in ("brier", "ece", "auc")
            }
        head = splits["unseen_prompts"]
        out[name] = {"brier": head["brier"]["mean"], "ece": head["ece"]["mean"], "auc": head["auc"]["mean"], "splits": splits}
    return out


# ---------------------------------------------------------------------- planner timing
def pin_to_one_core() -> int | None:
    """Run on one CPU core (the taskset equivalent) with one torch thread; returns the core."""
    torch.set_num_threads(1)
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    return cpus[-1]


def time_planner(regime: Regime, prompts_per_step: int = 512, leaves_per_prompt: int = 16, warmup: int = 2,
                 repeats: int = 5, seed: int = 0, settings: Settings = Settings(), freeze_gc: bool = True) -> dict[str, Any]:
    """Real CPU time of TRACE's planner (start + every leaves_done) and of the predictor's
    training_batch + update, per step at production scale, after ``warmup`` steps of learning.
    ``freeze_gc``: freeze the start-up objects before the first step, as the rollout worker does
    (``verl_trace.gcfreeze``); off, to measure what the freeze is worth."""
    r = regime.model_copy(deep=True)
    r.run.batch_prompts, r.run.leaves_per_prompt = prompts_per_step, leaves_per_prompt
    r.run.train_prompts = max(r.run.train_prompts, pool_size(r.run.pool_factor, prompts_per_step) * 2)
    r.run.steps = warmup + repeats
    core = pin_to_one_core()
    prompts = PromptSet(r, seed)
    env = Environment(r, prompts, seed=seed)
    cfg = make_config("trace", r, settings, seed)
    allocator = build_allocator(cfg)
    predictor = build_predictor(cfg.predictor)
    budget = step_budget(cfg, n_roots=prompts_per_step)
    leaves = budget.leaves
    executor = SlotExecutor(env, max(1, round(r.latency.slots_per_leaf * leaves)))
    # The rollout worker freezes once verl is imported, which has imported torch._dynamo; here the
    # predictor's first optimizer step would import it lazily, after the freeze, so import it now.
    import torch._dynamo  # noqa: F401

    frozen = freeze_startup_objects() if freeze_gc else 0
    rows = []
    GC.start()
    for step, pool_ids in enumerate(pools(r, prompts, seed)):
        pool = [env.root(int(i), step, f"s{step}/p{i}") for i in pool_ids]
        planner = new_planner(cfg, allocator, n_roots=prompts_per_step, budget=budget,
                              max_turns=r.turns.max_turns, predictor=predictor, rng=np.random.default_rng(step))
        f0, s0 = GC.full, GC.seconds
        res = executor.run(planner, pool)
        w0, c0, g0 = time.perf_counter(), time.thread_time(), GC.seconds
        batch, y = planner.training_batch()
        w1, c1 = time.perf_counter(), time.thread_time()
        predictor.update(batch, y)
        w2, c2 = time.perf_counter(), time.thread_time()
        if step >= warmup:
            rows.append({"plan_cpu": res.plan_cpu_s, "batch_cpu": c1 - c0, "update_cpu": c2 - c1,
                         "plan_wall": res.plan_wall_s, "batch_wall": w1 - w0, "update_wall": w2 - w1,
                         "gc_cpu": res.plan_gc_s + GC.seconds - g0, "full_collections": GC.full - f0, "gc_step": GC.seconds - s0,
                         "events": res.events, "nodes": sum(len(t) for t in res.trees.values()),
                         "anchors_trained": len(y)})
        for t in pool:
            env.forget(t.uid)
    GC.stop()

    def med(k: str) -> float:
        return 1000 * statistics.median(x[k] for x in rows)

    def total(kind: str) -> list[float]:
        return [1000 * (x[f"plan_{kind}"] + x[f"batch_{kind}"] + x[f"update_{kind}"]) for x in rows]

    cpu, wall = total("cpu"), total("wall")
    return {
        "prompts": prompts_per_step,
        "leaves_per_prompt": leaves_per_prompt,
        "max_turns": r.turns.max_turns,
        "candidate_pool": pool_size(r.run.pool_factor, prompts_per_step),
        "schedule": settings.schedule,
        "ready_fraction": settings.ready_fraction,
        "repeats": repeats,
        "cpu_core": core,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gc_frozen_objects": frozen,  # start-up objects the collector skips (0: not frozen)
        # CPU time of the planning thread: what the planner costs, immune to other processes on a
        # shared machine. Wall time is reported next to it.
        "ms_per_step": {"median": statistics.median(cpu), "min": min(cpu), "max": max(cpu), "clock": "thread CPU time"},
        "wall_ms_per_step": {"median": statistics.median(wall), "min": min(wall), "max": max(wall)},
        "breakdown_cpu_ms": {
            "plan_events": med("plan_cpu"), "training_batch": med("batch_cpu"), "predictor_update": med("update_cpu"),
        },
        # Of the CPU time above, what Python's garbage collector took inside these calls: full
        # collections scan the whole process (torch included) and land wherever a threshold trips.
        "gc_cpu_ms_per_step": {"median": med("gc_cpu"), "min": 1000 * min(x["gc_cpu"] for x in rows),
                               "max": 1000 * max(x["gc_cpu"] for x in rows)},
        "cpu_ms_per_step_without_gc": statistics.median(c - 1000 * x["gc_cpu"] for c, x in zip(cpu, rows)),
        # anywhere in the step (simulator included): what the collector costs the process per step
        "full_collections_per_step": statistics.median(x["full_collections"] for x in rows),
        "full_collections_by_step": [x["full_collections"] for x in rows],
        "gc_cpu_ms_whole_process_by_step": [1000 * x["gc_step"] for x in rows],
        "gc_cpu_ms_per_step_whole_process": med("gc_step"),
        "events_per_step": statistics.median(x["events"] for x in rows),
        "nodes_per_step": statistics.median(x["nodes"] for x in rows),
        "anchors_trained_per_step": statistics.median(x["anchors_trained"] for x in rows),
    }
