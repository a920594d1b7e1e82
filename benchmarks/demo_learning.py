"""Does the demo's agent visibly learn? Held-out accuracy gained over the warm start, per run and
the median over seeds, from finished demo runs (``report.json`` of ``python -m verl_trace.demo``
or of ``benchmarks/e2e_cpu.py``'s work folder).

    python benchmarks/demo_learning.py --out benchmarks/results/demo_learning.json --plot docs/img/demo_learning.png \\
        uniform:1=outputs/demo_learning/seed1/leaves/uniform trace:0=outputs/demo ...

A run is ``ALLOCATOR:SEED=DIR``, optionally ``@STEP``: read the run's curve only up to that RL step
(a longer run with a constant learning rate evaluated at STEP is the same experiment as a run that
stops there). The goal (issue 11 §1): GRPO (``uniform``) gains at least +0.10, median of 3 seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

RUN = re.compile(r"(?P<alloc>\w+):(?P<seed>\d+)=(?P<dir>[^@]+)(?:@(?P<step>\d+))?")
GOAL = 0.10


def read_run(spec: str) -> dict[str, Any]:
    m = RUN.fullmatch(spec)
    if not m:
        raise ValueError(f"{spec!r}: expected ALLOCATOR:SEED=DIR[@STEP]")
    path = Path(m["dir"]) / "report.json"
    if not path.is_file():
        raise ValueError(f"{spec!r}: no report at {path}")
    rep = json.loads(path.read_text())
    if rep["allocator"] != m["alloc"] or rep["seed"] != int(m["seed"]):
        raise ValueError(f"{spec!r}: the report is allocator {rep['allocator']!r} seed {rep['seed']}")
    last = int(m["step"]) if m["step"] else rep["steps"]
    evals = [e for e in rep["curves"]["eval"] if e["step"] <= last]
    if not evals or evals[-1]["step"] != last:
        raise ValueError(f"{spec!r}: no held-out evaluation at step {last}")
    return {
        "allocator": rep["allocator"], "seed": rep["seed"], "dir": m["dir"], "status": rep["status"],
        "steps": last, "lr": rep["settings"]["rl"]["lr"], "leaves_per_step": rep["budget"]["leaves_per_step"],
        "start_accuracy": evals[0]["accuracy"], "final_accuracy": evals[-1]["accuracy"],
        "gain": evals[-1]["accuracy"] - evals[0]["accuracy"],
        "final_standard_error": evals[-1].get("standard_error"), "eval_questions": evals[-1].get("questions"),
        "curve": [[e["step"], e["cumulative_tokens"], e["accuracy"]] for e in evals],
        "seconds_rl": rep["seconds"]["rl"],
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_alloc: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if any(o["seed"] == r["seed"] for o in by_alloc.get(r["allocator"], [])):
            raise ValueError(f"two runs of {r['allocator']} seed {r['seed']}: give each seed once")
        by_alloc.setdefault(r["allocator"], []).append(r)
    out: dict[str, Any] = {"goal_gain": GOAL, "allocators": {}}
    for alloc, rs in by_alloc.items():
        gains = [r["gain"] for r in rs]
        out["allocators"][alloc] = {
            "seeds": [r["seed"] for r in rs],
            "gain_median": statistics.median(gains),
            "gain_per_seed": {r["seed"]: r["gain"] for r in rs},
            "start_per_seed": {r["seed"]: r["start_accuracy"] for r in rs},
            "final_per_seed": {r["seed"]: r["final_accuracy"] for r in rs},
            "goal_met": len(rs) >= 3 and statistics.median(gains) >= GOAL,
            "runs": rs,
        }
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"uniform": "tab:blue", "trace": "tab:red", "tree_random": "tab:green", "prompt": "tab:purple"}
    for alloc, res in summary["allocators"].items():
        for r in res["runs"]:
            steps, tokens, acc = zip(*r["curve"], strict=True)
            label = f"{alloc} seed {r['seed']}"
            axes[0].plot(steps, [a - acc[0] for a in acc], marker="o", color=colors.get(alloc), alpha=0.8, label=label,
                         ls="-" if alloc == "uniform" else "--")
            axes[1].errorbar([t / 1e3 for t in tokens], acc, yerr=r["final_standard_error"], marker="o", capsize=2,
                             color=colors.get(alloc), alpha=0.8, label=label, ls="-" if alloc == "uniform" else "--")
    axes[0].axhline(GOAL, color="gray", ls=":", label=f"goal +{GOAL:.2f}")
    axes[0].set_xlabel("RL step")
    axes[0].set_ylabel("held-out accuracy minus the warm start's")
    axes[1].set_xlabel("generated tokens in RL rollouts (thousands)")
    axes[1].set_ylabel("held-out accuracy (EM; bars: one standard error)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("the CPU demo on verl's trainer: held-out accuracy (verl's validation, 1,051 questions, greedy)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="ALLOCATOR:SEED=DIR[@STEP]")
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    args = p.parse_args(argv)
    try:
        summary = {**summarize([read_run(spec) for spec in args.runs]), "command": " ".join(sys.argv)}
    except ValueError as exc:
        p.error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    if args.plot:
        plot(summary, args.plot)
    for alloc, res in summary["allocators"].items():
        per_seed = "  ".join(f"seed {s}: {res['start_per_seed'][s]:.3f} -> {res['final_per_seed'][s]:.3f}"
                             for s in res["seeds"])
        print(f"{alloc:10s} median gain {res['gain_median']:+.3f}  {per_seed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
