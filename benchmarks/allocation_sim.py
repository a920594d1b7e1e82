"""Allocation quality at equal sampling cost, on simulated agentic rollouts.

    python benchmarks/allocation_sim.py --out results.json [--regimes FILE_OR_DIR] [--seeds N] [--quick]

Runs every allocator (uniform, prompt, tree_random, entropy, trace, oracle) at the same leaf
budget on each regime for several training-like steps and seeds, scores predictors on held-out
prompts, times the planner + predictor at production scale on one core, prints tables and writes
JSON. docs/benchmarks.md ("Allocation simulator") explains the model and every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from benchmarks.sim.regime import Regime, RegimeError, load_regimes  # noqa: E402
from benchmarks.sim.report import goals, markdown, plot, print_tables  # noqa: E402
from benchmarks.sim.run import ALLOCATORS, Settings, aggregate, aggregate_predictors, run_seed, time_planner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def quick_regime(r: Regime) -> Regime:
    """Small sizes for --quick: same model, fewer prompts and steps."""
    q = r.model_copy(deep=True)
    q.run.batch_prompts, q.run.steps = 16, 3
    q.run.train_prompts = max(int(q.run.pool_factor * 16) * 2, 48)
    q.run.eval_prompts = 24
    return q


def _job(args: tuple[Regime, int, Settings]) -> tuple[str, int, dict]:
    regime, seed, settings = args
    return regime.name, seed, run_seed(regime, seed, settings)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="where to write the JSON results")
    ap.add_argument("--regimes", default=str(ROOT / "benchmarks" / "regimes"), help="a regime file or a directory of them")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per regime (default 5; 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for smoke tests (< 1 minute)")
    ap.add_argument("--workers", type=int, default=1, help="processes for (regime, seed) jobs")
    ap.add_argument("--ready-fraction", type=float, default=0.75, help="trace.ready_fraction for every allocator")
    ap.add_argument("--schedule", choices=("pipelined", "rounds"), default="pipelined")
    ap.add_argument("--rounds", type=int, default=1, help="trace.allocation.rounds for every allocator")
    ap.add_argument("--release-gain", type=float, default=1.0, help="trace.allocation.release_gain (trace, oracle)")
    ap.add_argument("--pool-factor", type=float, default=None, help="override run.pool_factor of every regime")
    ap.add_argument("--planner-repeats", type=int, default=None, help="timed production-scale steps (default 5; 1 with --quick)")
    ap.add_argument("--no-planner", action="store_true", help="skip the production-scale planner timing")
    ap.add_argument("--planner-only", action="store_true", help="only the production-scale planner timing (issue 11 §4)")
    ap.add_argument("--no-gc-freeze", action="store_true",
                    help="planner timing without the rollout worker's start-up gc.freeze() (what the freeze is worth)")
    ap.add_argument("--import-verl", action="store_true",
                    help="with --planner-only: time after importing verl's agent-loop worker, so the collector has the rollout "
                         "worker's start-up objects to walk (~570,000 tracked objects)")
    ap.add_argument("--plot", default=None, help="write the ESR / informative-comparison plot (PNG) here")
    ap.add_argument("--markdown", default=None, help="write the result tables as markdown here")
    args = ap.parse_args(argv)

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that the tables do not wrap
        console = Console(width=200)
    try:
        regimes = load_regimes(args.regimes)
    except RegimeError as e:
        console.print(f"[red]{e}[/red]")
        return 2
    if "default" not in regimes:
        console.print("[yellow]no regime named 'default' in --regimes; goals are reported for 'default' only[/yellow]")
    if args.pool_factor is not None:
        regimes = {k: v.model_copy(update={"run": v.run.model_copy(update={"pool_factor": args.pool_factor})}) for k, v in regimes.items()}
    if args.quick:
        regimes = {k: quick_regime(v) for k, v in regimes.items()}
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    if seeds < 1:
        ap.error("--seeds must be >= 1")
    settings = Settings(schedule=args.schedule, ready_fraction=args.ready_fraction, allocation=(("rounds", args.rounds), ("release_gain", args.release_gain)))
    t0 = time.time()
    if args.planner_only:
        return planner_only(args, regimes, settings, console, argv, t0)
    jobs = [(r, s, settings) for r in regimes.values() for s in range(seeds)]
    per: dict[str, dict[int, dict]] = {name: {} for name in regimes}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{len(jobs)} (regime, seed) runs x {len(ALLOCATORS)} allocators", total=len(jobs))
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers) as pool:
                for name, seed, res in pool.map(_job, jobs):
                    per[name][seed] = res
                    progress.advance(task)
        else:
            for job in jobs:
                name, seed, res = _job(job)
                per[name][seed] = res
                progress.advance(task)
    result = {
        "command": "python benchmarks/allocation_sim.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "seeds": seeds,
        "settings": {
            "schedule": settings.schedule,
            "ready_fraction": settings.ready_fraction,
            "allocation": dict(settings.allocation),
            "steps": {k: v.run.steps for k, v in regimes.items()},
            "batch_prompts": {k: v.run.batch_prompts for k, v in regimes.items()},
            "leaves_per_prompt": {k: v.run.leaves_per_prompt for k, v in regimes.items()},
            "pool_factor": {k: v.run.pool_factor for k, v in regimes.items()},
        },
        "regimes": {name: aggregate([per[name][s] for s in range(seeds)]) for name in regimes},
        "predictors_by_regime": {name: aggregate_predictors([per[name][s] for s in range(seeds)]) for name in regimes},
        "regime_params": {k: v.model_dump() for k, v in regimes.items()},
    }
    result["predictors"] = result["predictors_by_regime"].get("default") or next(iter(result["predictors_by_regime"].values()))
    if not args.no_planner:
        base = regimes.get("default") or next(iter(regimes.values()))
        with console.status("timing planner + predictor at production scale (512 x 16) on one core"):
            repeats = args.planner_repeats or (1 if args.quick else 5)
            result["planner"] = time_planner(base, warmup=1 if args.quick else 2, repeats=repeats, settings=settings,
                                             freeze_gc=not args.no_gc_freeze)
    result["goals"] = goals(result)
    result["seconds"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print_tables(result, console)
    if args.plot:
        plot(result, args.plot)
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))
    console.print(f"wrote {args.out} in {result['seconds']:.0f} s")
    return 0


def planner_only(args: argparse.Namespace, regimes: dict[str, Regime], settings: Settings, console: Console,
                 argv: list[str] | None, t0: float) -> int:
    """The production-scale timing alone: a few minutes instead of the whole simulation."""
    base = regimes.get("default") or next(iter(regimes.values()))
    if args.import_verl:
        import verl.trainer.ppo.v1.agent_loop_tq  # noqa: F401  what the rollout worker's process has loaded
    with console.status("timing planner + predictor at production scale (512 x 16) on one core"):
        planner = time_planner(base, warmup=1 if args.quick else 2, repeats=args.planner_repeats or (1 if args.quick else 5),
                               settings=settings, freeze_gc=not args.no_gc_freeze)
    result = {"command": "python benchmarks/allocation_sim.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "regimes": {}, "planner": planner}
    result["goals"] = goals(result)
    result["seconds"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    b = planner["breakdown_cpu_ms"]
    console.print(f"planner + predictor per step: median {planner['ms_per_step']['median']:.0f} ms CPU (plan events {b['plan_events']:.0f}, "
                  f"training_batch {b['training_batch']:.0f}, predictor update {b['predictor_update']:.0f}), "
                  f"of which garbage collector {planner['gc_cpu_ms_per_step']['median']:.0f}, "
                  f"without it {planner['cpu_ms_per_step_without_gc']:.0f}; load {planner['load_average_1m']:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
