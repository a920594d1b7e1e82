"""CPU end-to-end: learning efficiency of rollout allocators at equal sampling cost.

    nice python benchmarks/e2e_cpu.py --out results.json [--seeds 3] \\
        [--allocators uniform,tree_random,trace] [--steps 30] [--eval-every 3] [--work-dir outputs/e2e_cpu] \
        [--plot docs/img/e2e_cpu.png] [--only-seeds 0,2] [--set trace.allocation.pool_factor=1]

For each seed, one warm start (tokenizer, tiny model, demonstrations, supervised phase) is built
and every allocator's RL run starts from that same checkpoint, with the same leaf budget per step,
the same number of steps, the same held-out questions and one shared retrieval server. Each run is
the demo's own job (``verl_trace.demo.cli.run``), so it writes its full report under
``WORK_DIR/seed<N>/<allocator>/``; a finished run found there is reused, so an interrupted
benchmark continues where it stopped.

Results: per allocator, final held-out accuracy (mean, std over seeds), the accuracy curve against
cumulative generated tokens (means over seeds at each evaluation), and the generated tokens it
needed to first reach uniform's final accuracy of the same seed (median over seeds; seeds that
never reach it are counted as not reached), plus per-step effective-sample ratio, tokens and
predictor calibration. ``--probe-steps N`` adds N rollout steps per allocator and seed at the
warm-start policy without updates: how each allocator spends the budget (effective-sample ratio,
mixed roots, how often a branched prefix came out mixed, advantage magnitudes) and how good the
predictor is in its first steps.
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

from verl_trace.allocation import pool_size
from verl_trace.demo import cli, warm_start
from verl_trace.demo.learner import LeafBatch, compute_advantages
from verl_trace.demo.progress import DemoProgress
from verl_trace.demo.rl import RLRun
from verl_trace.demo.settings import make_settings
from verl_trace.demo.world import MINI_DIR
from verl_trace.metrics import forest_metrics
from verl_trace.tools.retrieval_server.process import RetrievalServerProcess


def run_all(allocators: list[str], seeds: list[int], overrides: dict[str, Any], work: Path, quick: bool,
            progress: DemoProgress) -> dict[str, dict[int, dict[str, Any]]]:
    reports: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in allocators}
    with RetrievalServerProcess(MINI_DIR / "corpus.jsonl", work / "retrieval_server.log") as server:
        for seed in seeds:
            for alloc in allocators:
                out = work / f"seed{seed}" / alloc
                done = out / "report.json"
                if done.is_file() and json.loads(done.read_text()).get("status") == "completed":
                    progress.log(f"seed {seed} {alloc}: reusing {done}")
                    reports[alloc][seed] = json.loads(done.read_text())
                    continue
                settings = make_settings(quick=quick, allocator=alloc, seed=seed, overrides=overrides)
                progress.log(f"seed {seed} {alloc}: {settings.rl.steps} steps x {settings.leaves_per_step} leaves")
                t0 = time.perf_counter()
                rep = cli.run(settings, out, quick=quick, resume=True, progress=progress,
                              warm_dir=work / f"seed{seed}" / "warm_start", retrieve_url=server.retrieve_url)
                progress.log(f"seed {seed} {alloc}: start {rep['start_accuracy']:.3f} final {rep['final_accuracy']:.3f} "
                             f"tokens {rep['generated_tokens']:,} ({time.perf_counter() - t0:.0f}s)")
                reports[alloc][seed] = rep
    return reports


def probe_step_metrics(run: RLRun) -> dict[str, float]:
    """One rollout step of ``run``'s allocator with the policy held fixed (no update): how the
    budget was spent and what the estimator makes of it. The predictor still learns from the step,
    as in training, so its AUC over probe steps shows how fast it becomes useful."""
    s = run.settings
    step = run.history.step + 1
    pool = run.sampler.take(pool_size(run.trace_cfg.allocation.pool_factor, s.rl.prompts_per_step))
    result = run.agent.rollout(pool, run.trace_cfg, n_roots=s.rl.prompts_per_step, leaves=s.leaves_per_step,
                               temperature=s.rl.temperature, predictor=run.predictor, featurizer=run.featurizer,
                               rng=np.random.default_rng([s.seed, 10_000 + step]), uid_prefix=f"p{step}-")
    run.history.steps.append({})  # only advances the step counter (uids, RNG streams)
    batch = LeafBatch.from_leaves(result.leaves)
    adv = compute_advantages(batch, s.estimator, run.trace_cfg.advantage)
    gen = batch.response_mask.bool()
    nonzero = (adv != 0) & gen
    m = forest_metrics(result.trees.values(), s.estimator, run.trace_cfg.advantage, run.trace_cfg.success_threshold,
                       prefix="")
    branched = mixed = 0
    p_hat, rate = [], []
    for tree in result.trees.values():
        succ, fail = tree.subtree_outcomes(run.trace_cfg.success_threshold)
        for node in tree.nodes[1:]:
            if len(node.children) >= 2:
                branched += 1
                mixed += int(succ[node.node_id] > 0 and fail[node.node_id] > 0)
                if "p_hat" in node.meta:
                    p_hat.append(node.meta["p_hat"])
                    rate.append(succ[node.node_id] / max(1, succ[node.node_id] + fail[node.node_id]))
    anchors, outcomes = result.training_batch()
    pred = run.predictor.update(anchors, outcomes) if len(anchors) else {}
    return {
        "reward_mean": float(np.mean([leaf.output.reward_score for leaf in result.leaves])),
        "effective_sample_ratio": m["effective_sample_ratio"],
        "mixed_root_ratio": m["mixed_root_ratio"],
        "informative_per_1k_tokens": m["informative_per_1k_tokens"],
        "tokens": m["tokens_generated"],
        "tokens_saved": m["tokens_saved"],
        "branch_points": m["branch_points"],
        "branched_mixed_ratio": mixed / branched if branched else float("nan"),
        "branched_p_hat_mean": float(np.mean(p_hat)) if p_hat else float("nan"),
        "branched_success_rate_mean": float(np.mean(rate)) if rate else float("nan"),
        "adv_nonzero_token_ratio": float(nonzero.sum() / gen.sum().clamp(min=1)),
        "adv_abs_mean_nonzero": float(adv[nonzero].abs().mean()) if bool(nonzero.any()) else 0.0,
        "predictor_auc": pred.get("predictor/hybrid_auc", float("nan")),
        "predictor_brier": pred.get("predictor/hybrid_brier", float("nan")),
    }


def probe(allocators: list[str], seeds: list[int], steps: int, overrides: dict[str, Any], work: Path, quick: bool,
          progress: DemoProgress) -> dict[str, Any]:
    """Allocation at a fixed policy (each seed's warm start): ``steps`` rollout steps per
    allocator, no updates. Separates what each allocator does with the budget from how the
    policy then learns."""
    out: dict[str, Any] = {}
    with RetrievalServerProcess(MINI_DIR / "corpus.jsonl", work / "retrieval_server_probe.log") as server:
        for alloc in allocators:
            rows = []
            for seed in seeds:
                settings = make_settings(quick=quick, allocator=alloc, seed=seed, overrides=overrides)
                warm = warm_start.find(work / f"seed{seed}" / "warm_start", settings)
                if warm is None:
                    raise FileNotFoundError(f"no warm start for seed {seed} in {work}: run the benchmark first")
                run = RLRun(settings, warm, work / f"seed{seed}" / f"probe_{alloc}", server.retrieve_url, progress)
                try:
                    rows += [probe_step_metrics(run) for _ in range(steps)]
                finally:
                    run.close()
            out[alloc] = {"steps": rows, "mean": {k: _nanmean([r[k] for r in rows]) for k in rows[0]},
                          "first_step_mean": {k: _nanmean([r[k] for r in rows[::steps]]) for k in rows[0]}}
            progress.log(f"probe {alloc}: " + ", ".join(f"{k} {v:.3f}" for k, v in out[alloc]["mean"].items()))
    return out


def first_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """Cumulative tokens at the first evaluation whose accuracy is at least ``target``."""
    return next((tokens for tokens, acc in curve if acc >= target - 1e-12), None)


def per_step(runs: list[list[dict[str, float]]], key: str) -> list[float]:
    """Mean over runs (seeds) of ``key`` at each RL step (NaN-aware: AUC is undefined on a step
    whose outcomes are all equal)."""
    n = min(len(r) for r in runs)
    return [_nanmean([r[i].get(key, np.nan) for r in runs]) for i in range(n)]


def early_late(values: list[float]) -> dict[str, float]:
    k = max(1, len(values) // 3)
    return {"first_third": _nanmean(values[:k]), "last_third": _nanmean(values[-k:])}


def _finite(value: Any) -> Any:
    """NaN (e.g. AUC of a step whose outcomes were all equal) as null: strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _finite_median(values: list[float]) -> float | None:
    """Median, or None when it is infinite (most seeds never got there) or there are no values."""
    med = float(np.median(values)) if values else np.inf
    return med if np.isfinite(med) else None


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(reports: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    seeds = sorted(set.intersection(*(set(r) for r in reports.values())))
    uniform = reports.get("uniform", {})
    out: dict[str, Any] = {"seeds": seeds, "allocators": {}}
    starts = [reports[a][s]["start_accuracy"] for a in reports for s in seeds]
    out["start_accuracy"] = float(np.mean(starts))
    out["start_accuracy_per_seed"] = {s: reports[next(iter(reports))][s]["start_accuracy"] for s in seeds}
    for alloc, by_seed in reports.items():
        curves = {s: [(e["cumulative_tokens"], e["accuracy"]) for e in by_seed[s]["curves"]["eval"]] for s in seeds}
        finals = [by_seed[s]["final_accuracy"] for s in seeds]
        n_points = min(len(c) for c in curves.values())
        mean_curve = [[float(np.mean([curves[s][i][0] for s in seeds])), float(np.mean([curves[s][i][1] for s in seeds]))]
                      for i in range(n_points)]
        reach, ratios = [], []
        for s in seeds:
            if s not in uniform:
                continue
            tokens = first_reach(curves[s], uniform[s]["final_accuracy"])
            reach.append(tokens)
            ratios.append(tokens / uniform[s]["generated_tokens"] if tokens is not None else np.inf)
        reached = [t for t in reach if t is not None]
        train = [by_seed[s]["curves"]["train"] for s in seeds]

        out["allocators"][alloc] = {
            "estimator": by_seed[seeds[0]]["estimator"],
            "final_accuracy": {"mean": float(np.mean(finals)), "std": float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
                               "per_seed": dict(zip(seeds, finals))},
            "tokens_to_reach_uniform_final": {
                # medians over seeds, a seed that never reached it counting as infinitely many tokens
                "median": _finite_median([t if t is not None else np.inf for t in reach]),
                "per_seed": dict(zip([s for s in seeds if s in uniform], reach)),
                "reached": len(reached),
                "ratio_to_uniform_total_median": _finite_median(ratios),
            },
            "generated_tokens": {"mean": float(np.mean([by_seed[s]["generated_tokens"] for s in seeds])),
                                 "per_seed": {s: by_seed[s]["generated_tokens"] for s in seeds}},
            "curve": mean_curve,
            "curve_per_seed": {s: [list(p) for p in c] for s, c in curves.items()},
            "steps": by_seed[seeds[0]]["steps"],
            "leaves_per_step": by_seed[seeds[0]]["budget"]["leaves_per_step"],
            "per_step": {k: per_step(train, k) for k in ("tokens", "reward_mean", "effective_sample_ratio", "mixed_root_ratio",
                                                   "branch_points", "tokens_saved", "predictor/hybrid_auc",
                                                   "predictor/hybrid_brier", "seconds")},
            "effective_sample_ratio": early_late(per_step(train, "effective_sample_ratio")),
            "predictor_auc": early_late(per_step(train, "predictor/hybrid_auc")),
            "predictor_brier": early_late(per_step(train, "predictor/hybrid_brier")),
            "seconds_rl_median": float(np.median([by_seed[s]["seconds"]["rl"] for s in seeds])),
        }
    return out


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
            axes[0].fill_between(tokens / 1e3, acc.mean(0) - acc.std(0, ddof=1), acc.mean(0) + acc.std(0, ddof=1),
                                 color=line.get_color(), alpha=0.15)
        esr = res["per_step"]["effective_sample_ratio"]
        axes[1].plot(range(1, len(esr) + 1), esr, color=line.get_color(), label=alloc)
    axes[0].set_xlabel("generated tokens in RL rollouts (thousands)")
    axes[0].set_ylabel("held-out accuracy (EM)")
    axes[0].set_title(f"mean ± sd over seeds {summary['seeds']}", fontsize=10)
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
    p.add_argument("--steps", type=int, help="RL steps per run (default: the demo's preset)")
    p.add_argument("--eval-every", type=int, help="held-out evaluation every N steps (default: the demo's preset)")
    p.add_argument("--work-dir", type=Path, default=Path("outputs/e2e_cpu"))
    p.add_argument("--plot", type=Path, help="write the comparison figure here (PNG)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a demo setting for every run, e.g. --set trace.allocation.pool_factor=1 (an "
                        "ablation: give it its own --work-dir; warm starts of the same seed can be copied in)")
    p.add_argument("--quick", action="store_true", help="the demo's quick preset (a smoke run, not a measurement)")
    p.add_argument("--probe-steps", type=int, default=0,
                   help="then N rollout steps per allocator and seed at the warm-start policy, without updates "
                        "(allocation quality, predictor quality early on)")
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
    t0 = time.perf_counter()
    with DemoProgress(enabled=not args.no_progress) as progress:
        try:
            overrides = cli.overrides(args.set, args.steps)
        except ValueError as e:
            p.error(str(e))
        if args.eval_every is not None:
            overrides.setdefault("rl", {})["eval_every"] = args.eval_every
        try:  # every run's settings are checked before anything starts
            for alloc in allocators:
                make_settings(quick=args.quick, allocator=alloc, seed=seeds[0], overrides=overrides)
        except ValidationError as e:
            p.error(f"invalid settings: {e}")
        try:
            reports = run_all(allocators, seeds, overrides, args.work_dir, args.quick, progress)
            probed = (probe(allocators, seeds, args.probe_steps, overrides, args.work_dir, args.quick, progress)
                      if args.probe_steps else None)
        except KeyboardInterrupt:
            progress.log(f"interrupted; the same command continues from {args.work_dir}")
            return 130
    summary = summarize(reports)
    if probed is not None:
        summary["probe"] = probed
    summary.update({"command": " ".join(sys.argv), "work_dir": str(args.work_dir), "quick": args.quick,
                    "seconds": time.perf_counter() - t0})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_finite(summary), indent=1))
    if args.plot:
        plot(summary, args.plot)
    for alloc, res in summary["allocators"].items():
        fa, reach = res["final_accuracy"], res["tokens_to_reach_uniform_final"]
        print(f"{alloc:12s} final {fa['mean']:.3f} ± {fa['std']:.3f}  tokens {res['generated_tokens']['mean']:,.0f}  "
              f"reach uniform final: median {reach['median']}  ({reach['reached']}/{len(summary['seeds'])} seeds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
