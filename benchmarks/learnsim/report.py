"""Diagnostics over seeds, the markdown table and the plot of the learning simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DIAGNOSTICS = ("tokens", "leaves", "esr", "mixed_roots", "train_reward", "root_true_p", "pool_true_p", "skipped")


def diagnostics(runs: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Per-step quantities averaged over the comparison's ``steps`` steps, then over seeds; the
    predictor's pre-update calibration over the second half; calibration against the true
    probability by whether the allocator favoured the anchor."""
    per_seed = {k: [] for k in DIAGNOSTICS}
    auc = []
    for r in runs:
        st = r["steps"][:steps]
        for row in st:
            row.setdefault("esr", row["effective_leaves"] / max(1, row["leaves"]))
        for k in DIAGNOSTICS:
            per_seed[k].append(float(np.mean([row[k] for row in st])))
        late = [row.get("hybrid_auc", row.get("shared_auc")) for row in st[steps // 2 :]]
        late = [x for x in late if x is not None and np.isfinite(x)]
        if late:
            auc.append(float(np.mean(late)))
    out: dict[str, Any] = {k: float(np.mean(v)) for k, v in per_seed.items()}
    if auc:
        out["predictor_auc_second_half"] = float(np.mean(auc))
    cal: dict[str, dict[str, float]] = {}
    for kind in ("roots_selected", "roots_skipped", "prefixes_expanded", "prefixes_other"):
        rows = [r["calibration"][kind] for r in runs if kind in r["calibration"]]
        if rows:
            n = sum(x["n"] for x in rows)
            cal[kind] = {
                "n": n,
                "bias": sum(x["bias"] * x["n"] for x in rows) / n,
                "rmse": float(np.sqrt(sum(x["rmse"] ** 2 * x["n"] for x in rows) / n)),
            }
    if cal:
        out["calibration_vs_true_p"] = cal
    return out


def _ci(x: dict[str, Any], fmt: str = "{:+.3f}") -> str:
    lo, hi = x["ci95"]
    def f(v):
        return ("∞" if v is None else fmt.format(v))
    return f"{f(x.get('mean', x.get('median')))} ({f(lo)} … {f(hi)})"


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = [
        f"budget: equal **{result['budget']}**, regime `{result['regime']}`, {result['seeds']} seeds, "
        f"target (uniform's final return, mean) {result['target_return']:.3f}",
        "",
        "| run | allocator | estimator | final return (95% CI) | − uniform, paired (95% CI) | tokens to uniform's final ÷ uniform's, median (95% CI) | reached | tokens/step | ESR | mixed roots | train reward | root p |",
        "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, a in result["allocators"].items():
        spec, d = runs[label], result["diagnostics"][label]
        pv = result["paired_vs_uniform"].get(label)
        diff = _ci(pv["final_return_diff"]) if pv else "—"
        ratio = _ci(pv["tokens_ratio"], "{:.2f}") if pv else "1"
        lines.append(
            f"| {label} | {spec['allocator']} | {spec['estimator']} | {_ci(a['final_return'], '{:.3f}')} | {diff} | {ratio} | "
            f"{a['tokens_to_target']['reached']}/{result['seeds']} | {d['tokens']:,.0f} | {d['esr']:.3f} | "
            f"{d['mixed_roots']:.3f} | {d['train_reward']:.3f} | {d['root_true_p']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["allocators"])
    colors = plt.get_cmap("tab10").colors
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    for i, label in enumerate(labels):
        c = np.array(result["allocators"][label]["curve"], float)
        ax.plot(c[:, 0] / 1e6, c[:, 1], label=label, color=colors[i % 10], lw=2 if label in ("uniform", "trace") else 1.2)
    ax.axhline(result["target_return"], color="grey", ls=":", lw=1)
    ax.set_xlabel("generated tokens (millions, mean over seeds)")
    ax.set_ylabel("held-out return (exact)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paired = result["paired_vs_uniform"]
    names = [x for x in labels if x in paired]
    for k, label in enumerate(names):
        r = paired[label]["tokens_ratio"]
        med, (lo, hi) = r["median"], r["ci95"]
        cap = 2.0
        m = cap if med is None else min(med, cap)
        lo_v = cap if lo is None else min(lo, cap)
        hi_v = cap if hi is None else min(hi, cap)
        bx.errorbar([m], [k], xerr=[[m - lo_v], [hi_v - m]], fmt="o", color=colors[labels.index(label) % 10], capsize=3)
        if med is None or hi is None:
            bx.annotate("not reached" if med is None else "CI open", (m, k), textcoords="offset points", xytext=(4, 4), fontsize=7)
    bx.axvline(1.0, color="grey", lw=1)
    bx.axvline(0.6, color="grey", ls=":", lw=1)
    bx.set_yticks(range(len(names)), names)
    bx.set_xlabel("tokens to reach uniform's final return ÷ uniform's\n(median over seeds, paired bootstrap 95% CI)")
    bx.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Learning simulator, regime {result['regime']}, equal {result['budget']}, {result['seeds']} seeds")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
