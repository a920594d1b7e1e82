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
        if label == reference:
            continue
        ratio = cross / ref_cross
        diff = final - ref_final
        paired[label] = {
            "tokens_ratio": {"median": finite(median(ratio)), "ci95": bootstrap_ci(lambda i, x=ratio: median(x[i]), n)},
            "final_return_diff": {"mean": float(diff.mean()), "ci95": bootstrap_ci(lambda i, x=diff: x[i].mean(), n)},
        }
    return {"allocators": allocators, "paired_vs_uniform": paired}
