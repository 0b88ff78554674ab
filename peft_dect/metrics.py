"""Classification and regression metrics by name, computed with numpy (no Hub download, so they work offline).

`evaluate.load("accuracy")` fetches its metric script from the Hub and fails offline, so the GLUE / LM-BFF formulas
are computed here; the tests check them against scikit-learn and scipy.
"""

from __future__ import annotations

import numpy as np


METRICS = ("accuracy", "f1", "macro_f1", "matthews_correlation", "pearson", "spearman")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def macro_f1(predictions, references) -> float:
    """F1 averaged over the classes that occur in the references or the predictions (scikit-learn's macro F1)."""
    pred, ref = np.asarray(predictions), np.asarray(references)
    scores = []
    for c in np.union1d(pred, ref):
        tp = float(((pred == c) & (ref == c)).sum())
        fp, fn = float(((pred == c) & (ref != c)).sum()), float(((pred != c) & (ref == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def metric_value(name: str, predictions, references) -> float:
    """One metric by name: accuracy, F1 of class 1, macro F1, Matthews correlation (binary), Pearson or Spearman."""
    pred, ref = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
    if name == "accuracy":
        return float((pred == ref).mean())
    if name == "f1":
        tp = float(((pred == 1) & (ref == 1)).sum())
        fp, fn = float(((pred == 1) & (ref != 1)).sum()), float(((pred != 1) & (ref == 1)).sum())
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    if name == "macro_f1":
        return macro_f1(pred, ref)
    if name == "matthews_correlation":
        tp, tn = float(((pred == 1) & (ref == 1)).sum()), float(((pred == 0) & (ref == 0)).sum())
        fp, fn = float(((pred == 1) & (ref == 0)).sum()), float(((pred == 0) & (ref == 1)).sum())
        denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return float((tp * tn - fp * fn) / denom) if denom > 0 else 0.0
    if name == "pearson":
        return _pearson(pred, ref)
    if name == "spearman":
        return _pearson(_ranks(pred), _ranks(ref))
    raise ValueError(f"Unknown metric {name!r}; known metrics: {', '.join(METRICS)}.")
