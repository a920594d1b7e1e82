"""The report directory: ``report.json``, learning-curve PNGs and one rendered rollout tree, built
from what verl's trainer wrote (``trainer``: the metrics files, the validation dumps, the tree
dumps, the checkpoints).

Written at the end of a run and also when it stops early (``status``: ``interrupted`` or
``failed``, with the curves of the completed steps), so Ctrl-C always leaves something to look at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..tree import RolloutTree, load_trees
from .family import DemoTask
from .render import pick_tree, save_html, save_png
from .settings import DemoSettings

TRAINER = "verl_trace.main_trace"
# The per-step curve: a short name for each metric of verl's or TRACE's that the plots and the
# benchmark read (every metric of every step is in ``step_metrics`` as well).
TRAIN_CURVE = {
    "tokens": "trace/tokens_generated",
    "leaves": "trace/leaves",
    "reward_mean": "critic/score/mean",
    "effective_sample_ratio": "trace/effective_sample_ratio",
    "mixed_root_ratio": "trace/mixed_root_ratio",
    "branch_points": "trace/branch_points",
    "tokens_saved": "trace/tokens_saved",
    "informative_comparisons": "trace/informative_comparisons",
    "leaves_failed": "trace/leaves_failed",
    "grad_norm": "actor/grad_norm",
    "rollout_probs_diff_max": "training/rollout_probs_diff_max",
    "seconds": "timing_s/step",
}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and value is not None else float("nan")


def train_curve(rows: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """One record per RL step (rows with ``step`` >= 1), with cumulative generated tokens."""
    out, total = [], 0
    for row in rows:
        if row["step"] < 1:
            continue
        rec = {"step": int(row["step"])}
        rec.update({name: _num(row.get(key)) for name, key in TRAIN_CURVE.items()})
        rec.update({k: _num(v) for k, v in row.items() if k.startswith(("plan/", "predictor/"))})
        total += int(rec["tokens"]) if np.isfinite(rec["tokens"]) else 0
        rec["cumulative_tokens"] = total
        out.append(rec)
    return out


def eval_curve(rows: Sequence[dict[str, Any]], train: Sequence[dict[str, float]], out: Path,
               task: DemoTask) -> list[dict[str, float]]:
    """One record per validation: verl's accuracy and what the task reads from verl's dump of the
    generations (search: accuracy by hops and where failures left the gold chain); ``train``
    (:func:`train_curve`) gives the generated tokens so far."""
    tokens = {0: 0, **{r["step"]: r["cumulative_tokens"] for r in train}}
    curve = []
    for row in rows:
        if (accuracy := task.accuracy(row)) is None:
            continue
        step = int(row["step"])
        rec: dict[str, float] = {"step": step, "cumulative_tokens": tokens.get(step, 0)}
        rec.update(task.read_validation(Path(out) / "validation" / f"{step}.jsonl", row))
        rec["accuracy"] = float(accuracy)  # verl's own number
        curve.append(rec)
    return curve


def checkpoints(out: Path) -> dict[str, Any]:
    """verl's checkpoint folder: the steps whose model is kept (verl's retention deletes an old
    step's ``actor/`` and leaves its ``data.pt``) and the latest (what a resume continues from)."""
    root = Path(out) / "checkpoints"
    steps = sorted(int(m[1]) for p in root.glob("global_step_*")
                   if (m := re.fullmatch(r"global_step_(\d+)", p.name)) and (p / "actor").is_dir())
    latest = root / "latest_checkpointed_iteration.txt"
    return {"dir": str(root), "steps": steps,
            "latest_step": int(latest.read_text().strip()) if latest.is_file() else None}


def build_report(settings: DemoSettings, rows: Sequence[dict[str, Any]], out: Path, task: DemoTask,
                 warm_info: dict[str, Any], *, quick: bool, status: str, seconds: dict[str, float]) -> dict[str, Any]:
    steps = train_curve(rows)
    evals = eval_curve(rows, steps, out, task)
    start = evals[0]["accuracy"] if evals else None
    final = evals[-1]["accuracy"] if evals else None
    leaves = [r["leaves"] for r in steps if np.isfinite(r["leaves"])]
    return {
        "trainer": TRAINER,
        "task": task.name,
        "allocator": settings.allocator,
        "estimator": settings.estimator,
        "seed": settings.seed,
        "quick": quick,
        "status": status,  # completed | interrupted | failed
        "start_accuracy": start,
        "final_accuracy": final,
        "final_accuracy_step": evals[-1]["step"] if evals else None,
        "final_accuracy_standard_error": evals[-1].get("standard_error") if evals else None,
        "best_accuracy": max((e["accuracy"] for e in evals), default=None),
        "steps": steps[-1]["step"] if steps else 0,
        "planned_steps": settings.rl.steps,
        "generated_tokens": steps[-1]["cumulative_tokens"] if steps else 0,
        "budget": {
            "leaves_per_step": settings.leaves_per_step,
            "prompts_per_step": settings.rl.prompts_per_step,
            "leaves_per_prompt": settings.rl.leaves_per_prompt,
            "pool_factor": settings.trace.allocation.pool_factor,
            "leaves_per_step_observed": {"min": min(leaves, default=None), "max": max(leaves, default=None)},
        },
        "train_reward_mean": _mean([r["reward_mean"] for r in steps]),
        "effective_sample_ratio_mean": _mean([r["effective_sample_ratio"] for r in steps]),
        "eval_questions": int(evals[0]["questions"]) if evals and "questions" in evals[0] else len(task.held_out()),
        "accuracy_label": task.accuracy_label,
        "warm_start": {k: v for k, v in warm_info.items() if k not in ("fingerprint", "sft_loss_curve")},
        "seconds": seconds,
        "checkpoints": checkpoints(out),
        "curves": {"eval": evals, "train": steps, "sft_loss": warm_info.get("sft_loss_curve", [])},
        "step_metrics": [dict(r) for r in rows if r["step"] >= 1],
        "settings": settings.model_dump(),
    }


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def plot_curves(report: dict[str, Any], out: Path) -> list[Path]:
    """``accuracy.png`` (held-out accuracy vs step and vs cumulative generated tokens, with ± one
    standard error) and ``training.png`` (train reward, effective-sample ratio, gradient norm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals, steps = report["curves"]["eval"], report["curves"]["train"]
    label = f"{report['allocator']} (seed {report['seed']})"
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    acc = np.array([e["accuracy"] for e in evals])
    err = np.array([e.get("standard_error", np.nan) for e in evals])
    for ax, key, xlabel in ((axes[0], "step", "RL step"), (axes[1], "cumulative_tokens", "generated tokens (RL rollouts)")):
        x = [e[key] for e in evals]
        ax.errorbar(x, acc, yerr=err, marker="o", capsize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(report.get("accuracy_label", "held-out accuracy"))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['task']}: held-out accuracy on {report['eval_questions']} test questions (verl's validation, greedy; "
                 f"bars: ± one standard error); {report['budget']['leaves_per_step']} leaves per step", fontsize=9)
    fig.tight_layout()
    paths.append(out / "accuracy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    x = [r["step"] for r in steps]
    for ax, key, title in ((axes[0], "reward_mean", "train reward (mean over leaves)"),
                           (axes[1], "effective_sample_ratio", "effective-sample ratio"),
                           (axes[2], "grad_norm", "actor gradient norm (verl)")):
        ax.plot(x, [r.get(key, np.nan) for r in steps], marker=".", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "training.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def last_trees(out: Path) -> tuple[int, list[RolloutTree]]:
    """The rollout trees of the latest step the workers dumped (``trees/step_<N>-*.json``)."""
    files: dict[int, list[Path]] = {}
    for p in (Path(out) / "trees").glob("step_*.json"):
        if m := re.fullmatch(r"step_(\d+)-\w+\.json", p.name):
            files.setdefault(int(m[1]), []).append(p)
    if not files:
        return 0, []
    step = max(files)
    return step, [t for p in sorted(files[step]) for t in load_trees(p)]


def write(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write everything into ``out``; returns the report with the file list added."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if report["curves"]["eval"]:
        files += [p.name for p in plot_curves(report, out)]
    step, trees = last_trees(out)
    tree = pick_tree({t.uid: t for t in trees})
    if tree is not None:
        title = f"{report['allocator']}, step {step}: {tree.prompt_text[:90]}"
        files += [save_png(tree, out / "rollout_tree.png", title).name, save_html(tree, out / "rollout_tree.html", title).name]
        (out / "rollout_tree.json").write_text(json.dumps(tree.to_dict(), default=_jsonable))
        files.append("rollout_tree.json")
    report = {**report, "files": files}
    (out / "report.json").write_text(json.dumps(strict_json(report), indent=1, default=_jsonable))
    return report


def strict_json(value: Any) -> Any:
    """NaN and infinities as null: report.json (and the benchmarks' JSON) is strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
