"""Tables (rich and markdown), goal checks and the plot for the allocation benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .run import ALLOCATORS

COLUMNS = (
    ("effective_sample_ratio", "ESR", "{:.3f}"),
    ("mixed_root_ratio", "mixed roots", "{:.3f}"),
    ("informative_per_1k_tokens", "inform./1k tok", "{:.2f}"),
    ("generated_tokens", "tokens/step", "{:,.0f}"),
    ("makespan_vs_uniform", "makespan ÷ uniform", "{:.2f}"),
    ("plan_ms", "plan CPU ms/step", "{:.0f}"),
)


def _cell(stat: dict[str, float] | None, fmt: str) -> str:
    if not stat:
        return "-"
    return f"{fmt.format(stat['mean'])} ± {fmt.format(stat['std'])}"


def goals(result: dict[str, Any], regime: str = "default") -> dict[str, dict[str, Any]]:
    """The issue's targets for TRACE in ``regime`` (all steps, and the second half of the steps)."""
    out: dict[str, dict[str, Any]] = {}
    res = result["regimes"].get(regime)
    if not res or "trace" not in res:
        return out
    for view in ("all_steps", "second_half"):
        def m(a: str, f: str, view: str = view) -> float:
            return (res[a] if view == "all_steps" else res[a]["second_half"])[f]["mean"]

        checks: dict[str, Any] = {}
        if "uniform" in res:
            checks["esr_vs_uniform"] = {"value": m("trace", "effective_sample_ratio") / m("uniform", "effective_sample_ratio"), "target": ">= 1.5"}
            checks["makespan_vs_uniform"] = {"value": m("trace", "makespan_vs_uniform"), "target": "<= 1.15"}
        if "tree_random" in res:
            checks["esr_vs_tree_random"] = {"value": m("trace", "effective_sample_ratio") / m("tree_random", "effective_sample_ratio"), "target": ">= 1.2"}
        if "oracle" in res:
            checks["esr_vs_oracle"] = {"value": m("trace", "effective_sample_ratio") / m("oracle", "effective_sample_ratio"), "target": ">= 0.85"}
        peers = [a for a in res if a not in ("trace", "oracle")]
        if peers:
            best = max(peers, key=lambda a: m(a, "informative_per_1k_tokens"))
            checks["informative_per_1k_vs_best_peer"] = {
                "value": m("trace", "informative_per_1k_tokens") / m(best, "informative_per_1k_tokens"),
                "target": "> 1", "best_peer": best,
            }
        for c in checks.values():
            t, v = c["target"], c["value"]
            op, bound = t.split()
            c["met"] = {">=": v >= float(bound), "<=": v <= float(bound), ">": v > float(bound)}[op]
        out[view] = checks
    planner = result.get("planner")
    if planner:
        ms = planner["ms_per_step"]["median"]
        out["planner"] = {"ms_per_step": {"value": ms, "target": "< 50", "met": ms < 50}}
    return out


def print_tables(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for regime, res in result["regimes"].items():
        t = Table(title=f"regime {regime}: mean ± std over {result['seeds']} seeds, {result['settings']['steps'][regime]} steps each")
        t.add_column("allocator")
        t.add_column("estimator")
        t.add_column("leaves/step")
        for _, head, _ in COLUMNS:
            t.add_column(head, justify="right")
        for a in (x for x in ALLOCATORS if x in res):
            r = res[a]
            t.add_row(a, r["estimator"], str(r["leaves"]), *[_cell(r.get(f), fmt) for f, _, fmt in COLUMNS])
        console.print(t)
    if result.get("predictors"):
        t = Table(title="predictor quality on held-out prompts (regime default; Brier, ECE lower is better)")
        for c in ("predictor", "split", "Brier", "ECE", "AUC"):
            t.add_column(c)
        for name, r in result["predictors"].items():
            for split, sc in r["splits"].items():
                t.add_row(name, split, *[_cell(sc[k], "{:.3f}") for k in ("brier", "ece", "auc")])
        console.print(t)
    if result.get("planner"):
        p = result["planner"]
        b = p["breakdown_cpu_ms"]
        console.print(
            f"planner + predictor at {p['prompts']} prompts x {p['leaves_per_prompt']} leaves, <= {p['max_turns']} turns, "
            f"one core: [bold]{p['ms_per_step']['median']:.0f} ms[/bold] CPU per step (median of {p['repeats']}; wall "
            f"{p['wall_ms_per_step']['median']:.0f} ms): events {b['plan_events']:.0f}, training_batch "
            f"{b['training_batch']:.0f}, update {b['predictor_update']:.0f}"
        )
    g = result.get("goals", {})
    for view in ("all_steps", "second_half"):
        if view in g:
            parts = [f"{k}={c['value']:.2f} ({c['target']}, {'met' if c['met'] else 'MISSED'})" for k, c in g[view].items()]
            console.print(f"goals ({view}): " + "; ".join(parts))


def markdown(result: dict[str, Any]) -> str:
    """The result tables as markdown, for docs/benchmarks.md."""
    lines = []
    for regime, res in result["regimes"].items():
        lines.append(f"**{regime}** ({result['settings']['steps'][regime]} steps, {result['seeds']} seeds)\n")
        lines.append("| allocator | estimator | leaves/step | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
        lines.append("|---" * (3 + len(COLUMNS)) + "|")
        for a in (x for x in ALLOCATORS if x in res):
            r = res[a]
            lines.append(f"| {a} | {r['estimator']} | {r['leaves']} | " + " | ".join(_cell(r.get(f), fmt) for f, _, fmt in COLUMNS) + " |")
        lines.append("")
    if result.get("predictors"):
        lines.append("| predictor | split | Brier | ECE | AUC |\n|---|---|---|---|---|")
        for name, r in result["predictors"].items():
            for split, sc in r["splits"].items():
                lines.append(f"| {name} | {split} | " + " | ".join(_cell(sc[k], "{:.3f}") for k in ("brier", "ece", "auc")) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    regimes = list(result["regimes"])
    allocs = [a for a in ALLOCATORS if any(a in result["regimes"][r] for r in regimes)]
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.9 * len(regimes) + 2), 7), sharex=True)
    width = 0.8 / len(allocs)
    x = np.arange(len(regimes))
    colors = plt.get_cmap("tab10").colors
    for ax, (field, label) in zip(axes, (("effective_sample_ratio", "effective-sample ratio"),
                                          ("informative_per_1k_tokens", "informative comparisons / 1k tokens"))):
        for i, a in enumerate(allocs):
            m = [result["regimes"][r].get(a, {}).get(field, {}).get("mean", np.nan) for r in regimes]
            s = [result["regimes"][r].get(a, {}).get(field, {}).get("std", 0.0) for r in regimes]
            ax.bar(x + (i - (len(allocs) - 1) / 2) * width, m, width, yerr=s, capsize=2, label=a, color=colors[i % 10])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=len(allocs), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    axes[1].set_xticks(x, regimes)
    fig.suptitle(f"Allocation at equal leaves: mean ± std over {result['seeds']} seeds", y=0.995)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
