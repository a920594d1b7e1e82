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
