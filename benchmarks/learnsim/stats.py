"""Seed-level summaries: crossing points on learning curves and paired bootstrap intervals."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP = 2000


def crossing(curve: Sequence[Sequence[float]], target: float) -> float:
    """Generated tokens at which the curve first reaches ``target`` (linear interpolation between
    evaluations); ``inf`` if it never does."""
    prev = None
    for tokens, ret in curve:
        if ret >= target:
            if prev is None or prev[1] >= target:
                return float(tokens)
            (t0, r0) = prev
            return float(t0 + (tokens - t0) * (target - r0) / (ret - r0))
        prev = (tokens, ret)
    return math.inf


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, seed: int = 0, level: float = 0.95) -> list[float | None]:
    """Percentile interval of ``stat(idx)`` over resampled seed indices (the same resample for
    every array ``stat`` reads, which is what makes a paired comparison paired)."""
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(BOOTSTRAP)], float)
    lo, hi = np.nanquantile(vals, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return [finite(lo), finite(hi)]


def median(x: np.ndarray) -> float:
    """Median that counts ``inf`` as larger than everything (a seed that never got there)."""
    return float(np.median(np.sort(x)))


def finite(x: float) -> float | None:
    """JSON has no infinity: unreached is ``null``."""
    return float(x) if math.isfinite(x) else None


def summarize(results: dict[str, list[dict]], steps: int, eval_every: int, reference: str = "uniform") -> dict:
    """The issue's JSON body from per-seed runs: ``results[label][k]`` is seed k's run. Each seed's
    target is uniform's final return on that seed (tasks differ between seeds, so a pooled target
    would be reached at once on easy seeds and never on hard ones); ``target_return`` reports their
    mean. Curves are means over seeds up to the horizon."""
    j_final = steps // eval_every
    ref = results[reference]
    n = len(ref)
    ref_final = np.array([r["curve"][j_final][1] for r in ref])
    ref_cross = np.array([crossing(r["curve"], t) for r, t in zip(ref, ref_final)])
    allocators, paired = {}, {}
    for label, runs in results.items():
        final = np.array([r["curve"][j_final][1] for r in runs])
        cross = np.array([crossing(r["curve"], t) for r, t in zip(runs, ref_final)])
        curve = np.mean([np.array(r["curve"][: j_final + 1], float) for r in runs], axis=0)
        allocators[label] = {
            "final_return": {"mean": float(final.mean()), "ci95": bootstrap_ci(lambda i, f=final: f[i].mean(), n)},
            "tokens_to_target": {"median": finite(median(cross)), "reached": int(np.isfinite(cross).sum())},
            "curve": [[round(float(t)), round(float(v), 5)] for t, v in curve],
            # per seed, so runs of separate invocations on the same seeds can be paired later
            "per_seed": {"final_return": [round(float(v), 6) for v in final], "tokens_to_target": [finite(v) for v in cross]},
        }
        if label != reference:
            paired[label] = paired_stats(final, cross, ref_final, ref_cross)
    return {"allocators": allocators, "paired_vs_uniform": paired}


def paired_stats(final: np.ndarray, cross: np.ndarray, ref_final: np.ndarray, ref_cross: np.ndarray) -> dict:
    """Paired comparison over seeds: the median ratio of tokens to the target and the mean
    difference of final return, each with a paired bootstrap interval."""
    n = len(final)
    ratio = cross / ref_cross
    diff = final - ref_final
    return {
        "tokens_ratio": {"median": finite(median(ratio)), "ci95": bootstrap_ci(lambda i, x=ratio: median(x[i]), n)},
        "final_return_diff": {"mean": float(diff.mean()), "ci95": bootstrap_ci(lambda i, x=diff: x[i].mean(), n)},
    }


def _per_seed(a: dict) -> tuple[np.ndarray, np.ndarray]:
    ps = a["per_seed"]
    return np.array(ps["final_return"], float), np.array([math.inf if x is None else x for x in ps["tokens_to_target"]], float)


def merge(parts: Sequence[dict], reference: str = "uniform", baseline: str | None = "trace") -> dict:
    """Results of several invocations on disjoint seeds (``--first-seed``; a run depends only on
    its seed and label, so this equals one invocation over all of them) as one: per-seed finals and
    crossings concatenated, the paired statistics recomputed, scalar diagnostics averaged with the
    seeds as weights, calibration with the anchors as weights. Curves are not merged. With
    ``baseline``, every run is also paired with that run (e.g. a variant against the default)."""
    labels = list(parts[0]["allocators"])
    if any(list(p["allocators"]) != labels or p["budget"] != parts[0]["budget"] for p in parts):
        raise ValueError("merge: the parts must have the same runs and budget")
    per = {k: [np.concatenate(x) for x in zip(*(_per_seed(p["allocators"][k]) for p in parts))] for k in labels}
    seeds = np.array([p["seeds"] for p in parts], float)
    out: dict = {"seeds": int(seeds.sum()), "budget": parts[0]["budget"], "runs": parts[0]["runs"],
                 "commands": [p["command"] for p in parts], "allocators": {}, "paired_vs_uniform": {}, "diagnostics": {}}
    out["target_return"] = float(per[reference][0].mean())
    for k in labels:
        final, cross = per[k]
        n = len(final)
        out["allocators"][k] = {
            "final_return": {"mean": float(final.mean()), "ci95": bootstrap_ci(lambda i, f=final: f[i].mean(), n)},
            "tokens_to_target": {"median": finite(median(cross)), "reached": int(np.isfinite(cross).sum())},
            "per_seed": {"final_return": final.tolist(), "tokens_to_target": [finite(v) for v in cross]},
        }
        if k != reference:
            out["paired_vs_uniform"][k] = paired_stats(final, cross, *per[reference])
        diags = [p["diagnostics"][k] for p in parts]
        d = {m: float(np.average([x[m] for x in diags], weights=seeds)) for m, v in diags[0].items() if isinstance(v, float)}
        cal = {}
        for kind in diags[0].get("calibration_vs_true_p", {}):
            rows = [x["calibration_vs_true_p"][kind] for x in diags]
            w = np.array([r["n"] for r in rows], float)
            cal[kind] = {"n": int(w.sum()), "bias": float(np.average([r["bias"] for r in rows], weights=w)),
                         "rmse": float(np.sqrt(np.average([r["rmse"] ** 2 for r in rows], weights=w)))}
        if cal:
            d["calibration_vs_true_p"] = cal
        out["diagnostics"][k] = d
    if baseline in per:
        b_final, b_cross = per[baseline]
        # tokens to the target relative to the baseline's own crossing on each seed
        out[f"paired_vs_{baseline}"] = {k: paired_stats(*per[k], b_final, b_cross) for k in labels if k != baseline}
    return out
