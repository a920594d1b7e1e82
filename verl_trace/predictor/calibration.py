"""Calibration metrics for success-probability predictions (Brier, ECE, AUC)."""

from __future__ import annotations

import numpy as np


def brier(p: np.ndarray, y: np.ndarray) -> float:
    p, y = np.asarray(p, float), np.asarray(y, float)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error with equal-width bins over [0, 1]."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    if not p.size:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / p.size)


def auc(p: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> float:
    """ROC AUC via the rank-sum statistic (ties get average ranks); NaN if only one class."""
    p, y = np.asarray(p, float), np.asarray(y, float) >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks over ties, vectorized: each distinct value gets the mean of the ranks it spans.
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def calibration_report(p: np.ndarray, y: np.ndarray, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}brier": brier(p, y), f"{prefix}ece": ece(p, y), f"{prefix}auc": auc(p, y)}


def quality_by_step(records: list[dict], prefix: str = "predictor/hybrid_") -> dict:
    """Per-step Brier, ECE and AUC of a run's predictor, as ``Predictor.update`` logs them (the
    predictions it made *before* learning from each step, on that step's anchors), and their means
    over the steps after the first third of training (issue 11 §4's AUC goal). ``records`` are the
    run's per-step metric dicts (the demo's ``report.json['curves']['train']``); steps without the
    metrics (no predictor, or an empty batch) are skipped."""
    rows = []
    for i, r in enumerate(records):
        vals = {k: r.get(f"{prefix}{k}") for k in ("brier", "ece", "auc")}
        if all(v is not None for v in vals.values()):
            rows.append({"step": int(r.get("step", i)), **{k: float(v) for k, v in vals.items()}})
    n = len(records)
    late = [r for r in rows if r["step"] >= n / 3]
    summary = {k: float(np.nanmean([r[k] for r in late])) if late else float("nan") for k in ("brier", "ece", "auc")}
    return {"per_step": rows, "after_first_third": summary, "steps": n}
