"""CPU end-to-end: learning efficiency of rollout allocators, through verl's trainer.

    nice python benchmarks/e2e_cpu.py --out results.json [--seeds 8] [--budget leaves|tokens] \\
        [--allocators uniform,tree_random,trace] [--steps 30] [--eval-every 10] [--work-dir outputs/e2e_cpu] \\
        [--plot docs/img/e2e_cpu.png] [--only-seeds 0,2] [--set rl.lr=2e-4] [--quick]

Every run is the CPU demo's job (``verl_trace.demo.cli.run``): RL through
``python -m verl_trace.main_trace`` on CPU with verl's validation as the held-out evaluation. Per
seed, one warm start is built and every allocator starts from it, with the same prompts per step,
the same steps and the same held-out questions, against one shared retrieval server. Runs are
paired by seed. A finished run found in ``--work-dir`` is reused, so an interrupted benchmark
continues where it stopped.

Budgets (``--budget``):

* ``leaves``: every method spends the same leaves per step (``rl.prompts_per_step *
  rl.leaves_per_prompt``), as GRPO with ``rollout.n`` does.
* ``tokens``: every method generates about uniform's tokens per step. A tree method turns the tokens
  its shared prefixes save into more leaves per prompt: ``rl.leaves_per_prompt`` is uniform's times
  uniform's generated tokens per leaf over this method's, both from the same seed's ``leaves`` runs
  (run first when missing). Equal in expectation, not a hard cap: ``trace.budget.tokens`` reserves
  the worst case (``response_length``) for every leaf in flight, so it must cover one chain per
  root, 16 x 384 = 6,144 tokens here, while uniform generates ~5,500 per step. The JSON records the
  leaves each method got and the tokens it generated. uniform itself is its ``leaves`` run.

Results: per allocator, final held-out accuracy (mean, sd, per seed), the accuracy curve against
generated tokens, the tokens it needed to first reach uniform's final accuracy of the same seed;
and ``paired_vs_uniform``: per allocator, the final-accuracy difference to uniform (mean over seeds,
paired-bootstrap 95% CI) and the ratio of those tokens to uniform's total tokens (median over
seeds, paired-bootstrap 95% CI; a seed that never reaches uniform's final counts as infinite).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from verl_trace.demo import cli
from verl_trace.demo.progress import DemoProgress
from verl_trace.demo.report import strict_json
from verl_trace.demo.settings import make_settings
from verl_trace.demo.world import MINI_DIR
from verl_trace.tools.retrieval_server.process import RetrievalServerProcess

BUDGETS = ("leaves", "tokens")


def run_dir(work: Path, seed: int, budget: str, alloc: str) -> Path:
    return work / f"seed{seed}" / budget / alloc


def finished(out: Path) -> dict[str, Any] | None:
    done = out / "report.json"
    if done.is_file() and (rep := json.loads(done.read_text())).get("status") == "completed":
        return rep
    return None


def tokens_per_leaf(rep: dict[str, Any]) -> float:
    return rep["generated_tokens"] / (rep["steps"] * rep["budget"]["leaves_per_step"])


def matched_leaves(uniform: dict[str, Any], same_leaves: dict[str, Any]) -> int:
    """``--budget tokens``: leaves per prompt at which a method generates about uniform's tokens
    per step, from both methods' runs at equal leaves (same seed)."""
    return max(2, round(uniform["budget"]["leaves_per_prompt"] * tokens_per_leaf(uniform) / tokens_per_leaf(same_leaves)))


def run_all(allocators: list[str], seeds: list[int], budget: str, overrides: dict[str, Any], work: Path, quick: bool,
            progress: DemoProgress) -> dict[str, dict[int, dict[str, Any]]]:
    reports: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in allocators}
    order = ["uniform", *(a for a in allocators if a != "uniform")]  # tokens: uniform first, it sets the budget
    with RetrievalServerProcess(MINI_DIR / "corpus.jsonl", work / "retrieval_server.log") as server:

        def one(seed: int, alloc: str, run_budget: str, extra: dict[str, Any]) -> dict[str, Any]:
            out = run_dir(work, seed, run_budget, alloc)
            if (rep := finished(out)) is not None:
                progress.log(f"seed {seed} {alloc}: reusing {out / 'report.json'}")
                return rep
            settings = make_settings(quick=quick, allocator=alloc, seed=seed, overrides=extra)
            progress.log(f"seed {seed} {alloc} ({run_budget}): {settings.rl.steps} steps x {settings.leaves_per_step} leaves")
            t0 = time.perf_counter()
            rep = cli.run(settings, out, quick=quick, resume=True, progress=progress,
                          warm_dir=work / f"seed{seed}" / "warm_start", retrieve_url=server.retrieve_url)
            progress.log(f"seed {seed} {alloc}: start {rep['start_accuracy']:.3f} final {rep['final_accuracy']:.3f} "
                         f"tokens {rep['generated_tokens']:,} ({time.perf_counter() - t0:.0f}s)")
            return rep

        for seed in seeds:
            for alloc in order:
                extra = overrides
                if budget == "tokens" and alloc != "uniform":
                    leaves = matched_leaves(reports["uniform"][seed], one(seed, alloc, "leaves", overrides))
                    extra = {**overrides, "rl": {**overrides.get("rl", {}), "leaves_per_prompt": leaves}}
                # uniform is the reference of both budgets: its one run is the ``leaves`` run
                reports[alloc][seed] = one(seed, alloc, "leaves" if alloc == "uniform" else budget, extra)
    return {a: reports[a] for a in allocators}


def first_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """Cumulative tokens at the first evaluation whose accuracy is at least ``target``."""
    return next((tokens for tokens, acc in curve if acc >= target - 1e-12), None)


def paired_bootstrap(values: list[float], statistic: str, draws: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """``statistic`` (mean or median) of per-seed paired values with a percentile bootstrap 95% CI
    over seeds (resampled with replacement). Infinite values (never reached) stay infinite."""
    x = np.asarray(values, dtype=float)
    stat = np.mean if statistic == "mean" else np.median
    if len(x) == 0:
        return {statistic: None, "ci95": [None, None], "seeds": 0}
    idx = np.random.default_rng(seed).integers(0, len(x), size=(draws, len(x)))
    boot = stat(x[idx], axis=1)
    lo, hi = np.quantile(boot, 0.025, method="lower"), np.quantile(boot, 0.975, method="higher")
    return {statistic: float(stat(x)), "ci95": [float(lo), float(hi)], "seeds": int(len(x))}


def per_step(runs: list[list[dict[str, float]]], key: str) -> list[float]:
    """Mean over runs (seeds) of ``key`` at each RL step (NaN-aware)."""
    n = min(len(r) for r in runs)
    return [_nanmean([r[i].get(key) for r in runs]) for i in range(n)]


def _nanmean(values: list[Any]) -> float:
    finite = [float(v) for v in values if isinstance(v, int | float) and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(reports: dict[str, dict[int, dict[str, Any]]], budget: str) -> dict[str, Any]:
    seeds = sorted(set.intersection(*(set(r) for r in reports.values())))
    uniform = reports.get("uniform", {})
    out: dict[str, Any] = {"budget": budget, "seeds": seeds, "allocators": {}, "paired_vs_uniform": {}}
    first = reports[next(iter(reports))]
    out["start_accuracy"] = float(np.mean([first[s]["start_accuracy"] for s in seeds]))
    out["start_accuracy_per_seed"] = {s: first[s]["start_accuracy"] for s in seeds}
    out["eval_questions"] = first[seeds[0]]["eval_questions"]
    for alloc, by_seed in reports.items():
        curves = {s: [(e["cumulative_tokens"], e["accuracy"]) for e in by_seed[s]["curves"]["eval"]] for s in seeds}
        finals = [by_seed[s]["final_accuracy"] for s in seeds]
        n_points = min(len(c) for c in curves.values())
        mean_curve = [[float(np.mean([curves[s][i][0] for s in seeds])), float(np.mean([curves[s][i][1] for s in seeds]))]
                      for i in range(n_points)]
        reach, ratios = [], []
        for s in seeds:
            if s in uniform:
                tokens = first_reach(curves[s], uniform[s]["final_accuracy"])
                reach.append(tokens)
                ratios.append(tokens / uniform[s]["generated_tokens"] if tokens is not None else np.inf)
        train = [by_seed[s]["curves"]["train"] for s in seeds]
        out["allocators"][alloc] = {
            "estimator": by_seed[seeds[0]]["estimator"],
            "final_accuracy": {"mean": float(np.mean(finals)),
                               "std": float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
                               "per_seed": dict(zip(seeds, finals))},
            "final_accuracy_standard_error": _nanmean([by_seed[s].get("final_accuracy_standard_error") for s in seeds]),
            "tokens_to_reach_uniform_final": {
                "median": _finite_median([t if t is not None else np.inf for t in reach]),
                "per_seed": dict(zip([s for s in seeds if s in uniform], reach)),
                "reached": sum(t is not None for t in reach),
            },
            "generated_tokens": {"mean": float(np.mean([by_seed[s]["generated_tokens"] for s in seeds])),
                                 "per_seed": {s: by_seed[s]["generated_tokens"] for s in seeds}},
            "curve": mean_curve,
            "curve_per_seed": {s: [list(p) for p in c] for s, c in curves.items()},
            "steps": by_seed[seeds[0]]["steps"],
            "leaves_per_step": by_seed[seeds[0]]["budget"]["leaves_per_step"],
            "leaves_per_step_observed": _nanmean([r["leaves"] for t in train for r in t]),
            "tokens_per_step": _nanmean([r["tokens"] for t in train for r in t]),
            "per_step": {k: per_step(train, k) for k in ("tokens", "leaves", "reward_mean", "effective_sample_ratio",
                                                         "mixed_root_ratio", "branch_points", "tokens_saved",
                                                         "predictor/auc", "predictor/brier", "seconds")},
            "seconds_rl_median": float(np.median([by_seed[s]["seconds"]["rl"] for s in seeds])),
        }
        if alloc != "uniform" and uniform:
            diffs = [by_seed[s]["final_accuracy"] - uniform[s]["final_accuracy"] for s in seeds if s in uniform]
            out["paired_vs_uniform"][alloc] = {"final_accuracy_diff": paired_bootstrap(diffs, "mean"),
                                               "tokens_ratio": paired_bootstrap(ratios, "median")}
    return out


def _finite_median(values: list[float]) -> float | None:
    med = float(np.median(values)) if values else np.inf
    return med if np.isfinite(med) else None


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for alloc, res in summary["allocators"].items():
        seeds = list(res["curve_per_seed"])
        curves = np.array([res["curve_per_seed"][s][: len(res["curve"])] for s in seeds], dtype=float)
        tokens, acc = curves[:, :, 0].mean(0), curves[:, :, 1]
        line = axes[0].plot(tokens / 1e3, acc.mean(0), marker="o", ms=3, label=f"{alloc} (advantage: {res['estimator']})")[0]
        if len(seeds) > 1:
            axes[0].fill_between(tokens / 1e3, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.15)
        esr = res["per_step"]["effective_sample_ratio"]
        axes[1].plot(range(1, len(esr) + 1), esr, color=line.get_color(), label=alloc)
    axes[0].set_xlabel("generated tokens in RL rollouts (thousands)")
    axes[0].set_ylabel(f"held-out accuracy (EM, {summary['eval_questions']} questions)")
    axes[0].set_title(f"budget: equal {summary['budget']}; mean and range over seeds {summary['seeds']}", fontsize=10)
    axes[1].set_xlabel("RL step")
    axes[1].set_ylabel("effective-sample ratio")
    axes[1].set_title("leaves with a non-zero advantage (mean over seeds)", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--only-seeds", help="comma list: run just these seeds (e.g. one process per core sharing "
                                        "--work-dir; a final run without it collects every seed)")
    p.add_argument("--allocators", default="uniform,tree_random,trace")
    p.add_argument("--budget", choices=BUDGETS, default="leaves", help="what every method gets the same of per step")
    p.add_argument("--steps", type=int, help="RL steps per run (default: the demo's preset)")
    p.add_argument("--eval-every", type=int, help="held-out evaluation every N steps (default: the demo's preset)")
    p.add_argument("--work-dir", type=Path, default=Path("outputs/e2e_cpu"))
    p.add_argument("--plot", type=Path, help="write the comparison figure here (PNG)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a demo setting for every run, e.g. --set trace.allocation.pool_factor=1 (an "
                        "ablation: give it its own --work-dir; warm starts of the same seed can be copied in)")
    p.add_argument("--quick", action="store_true", help="the demo's quick preset (a smoke run, not a measurement)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
    cli.quiet_libraries()
    seeds = list(range(args.seeds))
    if args.only_seeds:
        try:
            seeds = sorted({int(s) for s in args.only_seeds.split(",") if s.strip()})
        except ValueError:
            p.error(f"--only-seeds takes a comma list of integers, got {args.only_seeds!r}")
    if not seeds or min(seeds) < 0 or not allocators:
        p.error("need at least one non-negative seed and one allocator")
    if args.budget == "tokens" and "uniform" not in allocators:
        p.error("--budget tokens compares with uniform: list it in --allocators")
    try:
        overrides = cli.overrides(args.set, args.steps)
    except ValueError as e:
        p.error(str(e))
    if args.eval_every is not None:
        overrides.setdefault("eval", {})["every"] = args.eval_every
    try:  # every run's settings are checked before anything starts
        for alloc in allocators:
            make_settings(quick=args.quick, allocator=alloc, seed=seeds[0], overrides=overrides)
    except ValidationError as e:
        p.error(f"invalid settings: {e}")
    t0 = time.perf_counter()
    with DemoProgress(enabled=not args.no_progress) as progress:
        try:
            reports = run_all(allocators, seeds, args.budget, overrides, args.work_dir, args.quick, progress)
        except KeyboardInterrupt:
            progress.log(f"interrupted; the same command continues from {args.work_dir}")
            return 130
    summary = summarize(reports, args.budget)
    summary.update({"command": " ".join(sys.argv), "work_dir": str(args.work_dir), "quick": args.quick,
                    "seconds": time.perf_counter() - t0})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(strict_json(summary), indent=1))
    if args.plot:
        plot(summary, args.plot)
    for alloc, res in summary["allocators"].items():
        fa = res["final_accuracy"]
        line = f"{alloc:12s} final {fa['mean']:.3f} ± {fa['std']:.3f}  tokens {res['generated_tokens']['mean']:,.0f}"
        if alloc in summary["paired_vs_uniform"]:
            d = summary["paired_vs_uniform"][alloc]
            diff, ratio = d["final_accuracy_diff"], d["tokens_ratio"]
            line += (f"  vs uniform: {diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]  tokens ratio "
                     f"{ratio['median']} {ratio['ci95']}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
