"""Roots chosen from the whole candidate pool vs per rollout worker, on the allocation simulator.

    python benchmarks/root_choice.py --out benchmarks/results/root_choice.json [--seeds 5] [--workers 2 4 8] [--quick]

For each regime, seed and training-like step (the TRACE allocator; its shared predictor trained on
each step's trees exactly as in ``allocation_sim.py``), three ways to pick the step's roots from
the same candidate pool with the same predictor state:

* ``single``: one planner over the whole pool (``TreePlanner.start``), the reference;
* ``global``: what ``TraceAgentLoopManager`` does now: ``submission.choose_roots`` over the whole
  pool, then the roots split over W workers the way verl chunks a batch, one planner per worker,
  whose first chains are compared with the single planner's too;
* ``per_worker``: what the manager did before: the pool split over W workers, each choosing its
  proportional share of roots (largest remainder) from its own chunk.

Reported per regime and W: the share of steps where ``global`` equals ``single`` (roots, and first
chains per root), the overlap of ``per_worker`` with ``single``, and how informative each choice is
in truth: the mean over its roots of 1 - p^L - (1-p)^L, the probability that the root's L leaves
come out mixed under the simulator's true success probability p (a uniform random choice of roots
for scale). docs/benchmarks.md ("Root choice across workers") has the command, table and reading.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.allocation_sim import quick_regime  # noqa: E402
from benchmarks.sim.env import Environment, PromptSet  # noqa: E402
from benchmarks.sim.executor import SlotExecutor  # noqa: E402
from benchmarks.sim.regime import load_regimes  # noqa: E402
from benchmarks.sim.run import Settings, make_config, pools  # noqa: E402
from verl_trace.allocation import Budget, build_allocator, new_planner  # noqa: E402
from verl_trace.predictor import build_predictor  # noqa: E402
from verl_trace.rollout.submission import choose_roots  # noqa: E402
from verl_trace.tree import RolloutTree  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def chunks(items: Sequence, n: int) -> list[list]:
    """``items`` split as ``TensorDict.chunk(n)`` splits a batch: ceil(len/n) per chunk, in order."""
    size = max(1, math.ceil(len(items) / n))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def proportional_shares(n_roots: int, sizes: Sequence[int]) -> list[int]:
    """The previous manager's root shares: proportional to chunk size, largest remainder first."""
    total = sum(sizes)
    parts = [divmod(n_roots * s, total) for s in sizes]
    shares = [q for q, _ in parts]
    for i in sorted(range(len(parts)), key=lambda i: -parts[i][1])[: n_roots - sum(shares)]:
        shares[i] += 1
    return shares


def mixed(p: float, leaves: int) -> float:
    return 1.0 - p**leaves - (1.0 - p) ** leaves


def run_seed(regime, seed: int, workers: Sequence[int]) -> dict:
    run = regime.run
    prompts = PromptSet(regime, seed)
    env = Environment(regime, prompts, seed=seed * 1000 + 7)
    cfg = make_config("trace", regime, Settings(), seed)
    allocator = build_allocator(cfg)
    predictor = build_predictor(cfg.predictor)
    leaves = run.batch_prompts * run.leaves_per_prompt
    executor = SlotExecutor(env, max(1, round(regime.latency.slots_per_leaf * leaves)))
    rows: dict[int, list[dict]] = {w: [] for w in workers}
    random_values = []
    for step, pool_ids in enumerate(pools(regime, prompts, seed)):
        pool: list[RolloutTree] = [env.root(int(i), step, f"s{step}/p{i}") for i in pool_ids]
        true_p = {t.uid: t.root.meta["true_p"] for t in pool}

        def planner(n_roots: int, seed_tail: Sequence[int] = (), step: int = step):
            return new_planner(cfg, allocator, n_roots=n_roots, budget=Budget(n_roots * run.leaves_per_prompt),
                               max_turns=regime.turns.max_turns, predictor=predictor,
                               rng=np.random.default_rng([seed, step, 7, *seed_tail]))

        def value(uids, true_p: dict[str, float] = true_p) -> float:
            return float(np.mean([mixed(true_p[u], run.leaves_per_prompt) for u in uids]))

        single = planner(run.batch_prompts).choose_roots(pool)
        glob = choose_roots(cfg, pool, n_roots=run.batch_prompts, budget=Budget(leaves), predictor=predictor,
                            rng=np.random.default_rng([seed, step, 7])).roots
        by_uid = {t.uid: t for t in pool}
        for w in workers:
            first_chains: dict[str, int] = {}
            for part in chunks(glob, w):  # each worker's planner over its roots only
                first_chains.update(planner(len(part), (w,)).choose_roots([by_uid[u] for u in part]))
            old: list[str] = []
            parts = chunks(pool, w)
            for k, (part, share) in enumerate(zip(parts, proportional_shares(run.batch_prompts, [len(p) for p in parts]))):
                if share:
                    old += list(planner(share, (w, k)).choose_roots(part))
            rows[w].append({
                "global_equals_single": set(glob) == set(single),
                "first_chains_equal": first_chains == single,
                "per_worker_overlap": len(set(old) & set(single)) / run.batch_prompts,
                "value_single": value(single), "value_global": value(glob), "value_per_worker": value(old),
            })
        pick = np.random.default_rng([seed, step, 11]).choice(len(pool), run.batch_prompts, replace=False)
        random_values.append(value([pool[i].uid for i in pick]))
        # The step itself (single planner), so the predictor learns as in a training run.
        step_planner = planner(run.batch_prompts)
        executor.run(step_planner, pool)
        predictor.update(*step_planner.training_batch())
        for t in pool:
            env.forget(t.uid)
    return {"workers": {str(w): r for w, r in rows.items()}, "value_random": random_values}


def summarize(per_seed: Sequence[dict], workers: Sequence[int]) -> dict:
    out: dict = {}
    for w in workers:
        rows = [r for s in per_seed for r in s["workers"][str(w)]]
        seed_means = {k: [statistics.fmean(r[k] for r in s["workers"][str(w)]) for s in per_seed]
                      for k in ("per_worker_overlap", "value_single", "value_per_worker")}
        seed_means["value_gap"] = [a - b for a, b in zip(seed_means["value_single"], seed_means["value_per_worker"])]
        out[str(w)] = {
            "steps": len(rows),
            "global_equals_single": sum(r["global_equals_single"] for r in rows) / len(rows),
            "first_chains_equal": sum(r["first_chains_equal"] for r in rows) / len(rows),
            **{f"{k}_median": statistics.median(v) for k, v in seed_means.items()},
            **{f"{k}_range": [min(v), max(v)] for k, v in seed_means.items()},
            **{f"{k}_seeds": v for k, v in seed_means.items()},
        }
    out["value_random_median"] = statistics.median(statistics.fmean(s["value_random"]) for s in per_seed)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--regimes", default=str(ROOT / "benchmarks" / "regimes"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 seeds")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    regimes = load_regimes(args.regimes)
    if args.quick:
        regimes = {k: quick_regime(v) for k, v in regimes.items()}
    seeds = 2 if args.quick else args.seeds
    result: dict = {"command": " ".join(["python benchmarks/root_choice.py", *(argv or sys.argv[1:])]),
                    "seeds": list(range(seeds)), "workers": args.workers, "regimes": {}}
    t0 = time.perf_counter()
    for name, regime in regimes.items():
        per_seed = [run_seed(regime, seed, args.workers) for seed in range(seeds)]
        result["regimes"][name] = {"batch_prompts": regime.run.batch_prompts, "pool_factor": regime.run.pool_factor,
                                   "leaves_per_prompt": regime.run.leaves_per_prompt, "steps": regime.run.steps,
                                   **summarize(per_seed, args.workers)}
        s = result["regimes"][name]
        print(f"{name}: " + "  ".join(
            f"W={w}: global==single {s[str(w)]['global_equals_single']:.0%} (first chains "
            f"{s[str(w)]['first_chains_equal']:.0%}), per-worker overlap {s[str(w)]['per_worker_overlap_median']:.2f}, "
            f"P(mixed) single {s[str(w)]['value_single_median']:.3f} per-worker {s[str(w)]['value_per_worker_median']:.3f}"
            for w in args.workers) + f"  random {s['value_random_median']:.3f}", flush=True)
    result["seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
