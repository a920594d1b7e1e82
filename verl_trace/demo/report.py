"""The report directory: ``report.json``, learning-curve PNGs and one rendered rollout tree.

Written at the end of a run and also when it stops early (``status``: ``interrupted`` or
``failed``, with the curves of the completed steps), so Ctrl-C always leaves something to look at.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..tree import RolloutTree
from .render import pick_tree, save_html, save_png
from .rl import History
from .settings import DemoSettings


def build_report(settings: DemoSettings, history: History, warm_info: dict[str, Any], *, quick: bool,
                 status: str, seconds: dict[str, float]) -> dict[str, Any]:
    evals, steps = history.evals, history.steps
    start = evals[0]["accuracy"] if evals else None
    final = evals[-1]["accuracy"] if evals else None
    leaves = [r["leaves"] for r in steps]
    return {
        "allocator": settings.allocator,
        "estimator": settings.estimator,
        "seed": settings.seed,
        "quick": quick,
        "status": status,  # completed | interrupted | failed
        "start_accuracy": start,
        "final_accuracy": final,
        "final_accuracy_step": evals[-1]["step"] if evals else None,
        "best_accuracy": max((e["accuracy"] for e in evals), default=None),
        "steps": history.step,
        "planned_steps": settings.rl.steps,
        "generated_tokens": history.tokens,
        "budget": {
            "leaves_per_step": settings.leaves_per_step,
            "prompts_per_step": settings.rl.prompts_per_step,
            "leaves_per_prompt": settings.rl.leaves_per_prompt,
            "pool_factor": settings.trace.allocation.pool_factor,
            "leaves_per_step_observed": {"min": min(leaves, default=None), "max": max(leaves, default=None)},
        },
        "train_reward_mean": float(np.mean([r["reward_mean"] for r in steps])) if steps else None,
        "effective_sample_ratio_mean": float(np.mean([r["effective_sample_ratio"] for r in steps])) if steps else None,
        "eval_questions": int(evals[0]["questions"]) if evals else 0,
        "warm_start": {k: v for k, v in warm_info.items() if k not in ("fingerprint", "sft_loss_curve")},
        "seconds": seconds,
        "curves": {"eval": evals, "train": steps, "sft_loss": warm_info.get("sft_loss_curve", [])},
        "settings": settings.model_dump(),
    }


def plot_curves(report: dict[str, Any], out: Path) -> list[Path]:
    """``accuracy.png`` (held-out accuracy vs step and vs cumulative generated tokens) and
    ``training.png`` (train reward, effective-sample ratio, predictor AUC before each update)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals, steps = report["curves"]["eval"], report["curves"]["train"]
    label = f"{report['allocator']} (seed {report['seed']})"
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, xlabel in ((axes[0], "step", "RL step"), (axes[1], "cumulative_tokens", "generated tokens (RL rollouts)")):
        ax.plot([e[key] for e in evals], [e["accuracy"] for e in evals], marker="o", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (EM)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"held-out accuracy on {report['eval_questions']} test questions; "
                 f"{report['budget']['leaves_per_step']} leaves per step", fontsize=10)
    fig.tight_layout()
    paths.append(out / "accuracy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    x = [r["step"] for r in steps]
    for ax, key, title in ((axes[0], "reward_mean", "train reward (mean over leaves)"),
                           (axes[1], "effective_sample_ratio", "effective-sample ratio"),
                           (axes[2], "predictor/hybrid_auc", "predictor AUC (before update)")):
        y = [r.get(key, np.nan) for r in steps]
        ax.plot(x, y, marker=".", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "training.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write(out: Path, report: dict[str, Any], trees: dict[str, RolloutTree]) -> dict[str, Any]:
    """Write everything into ``out``; returns the report with the file list added."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if report["curves"]["eval"]:
        files += [p.name for p in plot_curves(report, out)]
    tree = pick_tree(trees)
    if tree is not None:
        step = report["steps"]
        title = f"{report['allocator']}, step {step}: {tree.prompt_text[:90]}"
        files += [save_png(tree, out / "rollout_tree.png", title).name, save_html(tree, out / "rollout_tree.html", title).name]
        (out / "rollout_tree.json").write_text(json.dumps(tree.to_dict(), default=_jsonable))
        files.append("rollout_tree.json")
    report = {**report, "files": files}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_jsonable))
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
