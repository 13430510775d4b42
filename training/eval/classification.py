"""Classification metrics with bootstrap confidence intervals (numpy only).

What the official VersaMammo evaluation reports for each classification task: accuracy,
macro-F1 and macro one-vs-rest AUC, each with a percentile bootstrap 95% interval over
resampled cases. Classes absent from a resample are skipped in the macro averages (AUC needs
both a positive and a negative), as is usual; a class never present gets no AUC at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A metric value with its bootstrap 95% interval (NaN bounds when not bootstrapped)."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci95": [self.low, self.high]}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean F1 over classes that occur in the truth or the predictions."""
    scores = []
    for c in range(n_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula with average ranks for ties; NaN without both classes."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over classes with both positives and negatives."""
    values = [binary_auc(y_true == c, probs[:, c]) for c in range(probs.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def bootstrap(metric: Callable[[np.ndarray], float], n: int, resamples: int, seed: int = 0) -> Estimate:
    """``metric(indices)`` on all cases, with a percentile 95% interval over ``resamples`` draws."""
    value = metric(np.arange(n))
    if resamples <= 0 or n == 0:
        return Estimate(value, float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = np.array([metric(rng.integers(0, n, n)) for _ in range(resamples)])
    draws = draws[~np.isnan(draws)]
    if len(draws) == 0:
        return Estimate(value, float("nan"), float("nan"))
    low, high = np.percentile(draws, [2.5, 97.5])
    return Estimate(value, float(low), float(high))


def classification_report(y_true: np.ndarray, probs: np.ndarray, resamples: int = 1000,
                          seed: int = 0) -> dict[str, dict[str, float] | int]:
    """Accuracy, macro-F1 and macro OvR AUC with 95% intervals for one single-label task.

    ``y_true``: (N,) class indices, entries < 0 are unlabelled and ignored.
    ``probs``: (N, C) predicted probabilities (or any scores; argmax is the prediction).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    keep = y_true >= 0
    y_true, probs = y_true[keep], probs[keep]
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    n_classes = probs.shape[1]
    return {
        "n": int(len(y_true)),
        "accuracy": bootstrap(lambda i: accuracy(y_true[i], y_pred[i]), len(y_true), resamples, seed).to_dict(),
        "macro_f1": bootstrap(lambda i: macro_f1(y_true[i], y_pred[i], n_classes), len(y_true), resamples,
                              seed).to_dict(),
        "macro_auc": bootstrap(lambda i: macro_auc_ovr(y_true[i], probs[i]), len(y_true), resamples,
                               seed).to_dict(),
    }


def multilabel_report(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray | None = None,
                      resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, float] | int]:
    """Macro AUC and macro-F1 (threshold 0.5) over labels for a multi-label task.

    ``mask`` (N,) selects the cases whose labels are known.
    """
    targets = np.asarray(targets, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        targets, probs = targets[keep], probs[keep]

    def auc(i: np.ndarray) -> float:
        values = [binary_auc(targets[i, k], probs[i, k]) for k in range(targets.shape[1])]
        values = [v for v in values if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    def f1(i: np.ndarray) -> float:
        pred = probs[i] >= 0.5
        scores = []
        for k in range(targets.shape[1]):
            tp = np.sum(pred[:, k] & targets[i, k])
            fp = np.sum(pred[:, k] & ~targets[i, k])
            fn = np.sum(~pred[:, k] & targets[i, k])
            if tp + fp + fn:
                scores.append(2 * tp / (2 * tp + fp + fn))
        return float(np.mean(scores)) if scores else float("nan")

    n = len(targets)
    return {"n": int(n), "macro_auc": bootstrap(auc, n, resamples, seed).to_dict(),
            "macro_f1": bootstrap(f1, n, resamples, seed).to_dict()}
