"""Classification and regression metrics by name, computed with numpy (no Hub download, so they work offline).

`evaluate.load("accuracy")` fetches its metric script from the Hub and fails offline, so the GLUE / LM-BFF formulas
are computed here; the tests check them against scikit-learn and scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np


METRICS = ("accuracy", "f1", "macro_f1", "matthews_correlation", "pearson", "spearman")
MULTI_LABEL_METRICS = ("micro_f1", "macro_f1", "exact_match", "hamming_loss")
"""Metrics of multi-label predictions, (N, C) 0/1 matrices: `multi_label_value`."""


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


def multi_label_value(name: str, predictions, references) -> float:
    """One metric of (N, C) 0/1 prediction and reference matrices, as scikit-learn computes it: micro F1 (counts
    pooled over classes), macro F1 (over every class, a class with no positive anywhere scoring 0), exact match
    (rows whose whole label set is right) or Hamming loss (share of wrong cells)."""
    pred, ref = np.asarray(predictions, dtype=bool), np.asarray(references, dtype=bool)
    if pred.shape != ref.shape or pred.ndim != 2:
        raise ValueError(f"Multi-label metrics need two (N, C) matrices, got {pred.shape} and {ref.shape}.")
    tp, fp, fn = (pred & ref).sum(0), (pred & ~ref).sum(0), (~pred & ref).sum(0)
    if name == "micro_f1":
        denom = 2 * tp.sum() + fp.sum() + fn.sum()
        return float(2 * tp.sum() / denom) if denom else 0.0
    if name == "macro_f1":
        denom = 2 * tp + fp + fn
        return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))
    if name == "exact_match":
        return float((pred == ref).all(1).mean())
    if name == "hamming_loss":
        return float((pred != ref).mean())
    raise ValueError(f"Unknown multi-label metric {name!r}; known metrics: {', '.join(MULTI_LABEL_METRICS)}.")


MetricFn = Callable[[np.ndarray, np.ndarray], float]


def resolve_metric(metric: Any) -> tuple[str, MetricFn]:
    """(name, fn(predictions, references) -> float) of a metric given as a name of `METRICS`, a callable, or an
    `evaluate` metric module (anything with `compute(predictions=, references=)`); None is accuracy.

    A callable that raises or returns something other than a finite number is reported by name.
    """
    if metric is None:
        return "accuracy", lambda p, r: metric_value("accuracy", p, r)
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"Unknown metric {metric!r}; give one of {', '.join(METRICS)} or a callable.")
        return metric, lambda p, r: metric_value(metric, p, r)
    if hasattr(metric, "compute"):  # an `evaluate` module: its result is a dict of one or more values
        name = str(getattr(metric, "name", None) or type(metric).__name__)

        def compute(p, r):
            out = metric.compute(predictions=list(p), references=list(r))
            if isinstance(out, dict):
                out = out.get(name, next(iter(out.values())) if len(out) == 1 else None)
            return out

        return name, checked(name, compute)
    if callable(metric):
        name = getattr(metric, "__name__", None) or type(metric).__name__
        return name, checked(name, metric)
    raise TypeError(
        f"metric must be a name ({', '.join(METRICS)}), a callable (predictions, references) -> float or an "
        f"`evaluate` metric, got {type(metric).__name__}."
    )


def checked(name: str, fn: Callable) -> MetricFn:
    """`fn` whose failures and non-numeric results raise a ValueError naming the metric."""

    def run(predictions, references) -> float:
        try:
            value = fn(predictions, references)
        except Exception as err:
            raise ValueError(f"The metric {name!r} raised {type(err).__name__}: {err}") from err
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise ValueError(f"The metric {name!r} must return a finite number, got {value!r}.")
        return float(value)

    return run
