"""Classification metrics (confusion counts, AUC from score histograms) per site.
See `consortia.common.metrics.exact`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, roc_auc_score

from consortia.common.metrics.base import (
    ACCURACY,
    AUC,
    CASES,
    CM_PREFIX,
    F1,
    SENSITIVITY,
    SPECIFICITY,
    check_int,
    check_labels,
    confusion_key,
    negative_histogram_key,
    positive_histogram_key,
    ratio,
)

__all__ = [
    "ClassificationMetricAccumulator",
    "compute_classification_summary",
    "finalize_classification",
]


class ClassificationMetricAccumulator:
    """Accumulates a confusion matrix and per-class score histograms (for AUC).

    Args:
        num_classes: number of classes (at least 2; 2 means binary with positive class 1).
        auc_bins: histogram bins over ``[0, 1]`` for the AUC.
    """

    def __init__(self, num_classes: int, auc_bins: int = 1000) -> None:
        check_int("num_classes", num_classes, 2)
        check_int("auc_bins", auc_bins, 1)
        self.num_classes = num_classes
        self.auc_bins = auc_bins
        self._scored = [1] if num_classes == 2 else list(range(num_classes))
        self.reset()

    def reset(self) -> None:
        """Forget every case seen so far."""
        self._cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self._pos = {c: np.zeros(self.auc_bins, dtype=np.int64) for c in self._scored}
        self._neg = {c: np.zeros(self.auc_bins, dtype=np.int64) for c in self._scored}

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add class probabilities ``(B, C)`` (float in ``[0, 1]``) and labels ``(B,)``."""
        if not isinstance(probs, torch.Tensor):
            raise TypeError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
        if not probs.is_floating_point():
            raise TypeError(f"probs must be floating point, got dtype {probs.dtype}")
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must have shape (B, {self.num_classes}), got {probs.shape}")
        target = check_labels("targets", targets, self.num_classes)
        if target.shape != probs.shape[:1]:
            raise ValueError(f"targets must have shape ({probs.shape[0]},), got {target.shape}")
        scores = probs.detach().cpu().double().numpy()
        if not np.all((scores >= 0.0) & (scores <= 1.0)):
            raise ValueError("probs must be finite probabilities in [0, 1]")
        labels = target.numpy()
        predicted = scores.argmax(axis=1)
        self._cm += confusion_matrix(labels, predicted, labels=np.arange(self.num_classes))
        for c in self._scored:
            positive = labels == c
            self._pos[c] += self._histogram(scores[positive, c])
            self._neg[c] += self._histogram(scores[~positive, c])

    def _histogram(self, scores: np.ndarray) -> np.ndarray:
        counts, _ = np.histogram(scores, bins=self.auc_bins, range=(0.0, 1.0))
        return counts.astype(np.int64)

    def summary(self) -> dict[str, float]:
        """Confusion-matrix counts ``cm_{true}_{pred}`` and ``cases``, ready for :func:`combine`."""
        result = {CASES: float(self._cm.sum())}
        for (i, j), count in np.ndenumerate(self._cm):
            result[confusion_key(int(i), int(j))] = float(count)
        return result

    def histograms(self) -> dict[str, list[float]]:
        """Score histograms per scored class, ready for :func:`combine_histograms`."""
        result: dict[str, list[float]] = {}
        for c in self._scored:
            result[positive_histogram_key(c)] = [float(v) for v in self._pos[c]]
            result[negative_histogram_key(c)] = [float(v) for v in self._neg[c]]
        return result


def compute_classification_summary(
    probs: torch.Tensor, targets: torch.Tensor, auc_bins: int = 1000
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Functional form of :class:`ClassificationMetricAccumulator`: (summary, histograms)."""
    if not isinstance(probs, torch.Tensor) or probs.ndim != 2:
        raise ValueError("probs must be a (B, C) torch.Tensor")
    accumulator = ClassificationMetricAccumulator(int(probs.shape[1]), auc_bins)
    accumulator.update(probs, targets)
    return accumulator.summary(), accumulator.histograms()


def _histogram_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if pos.shape != neg.shape:
        raise ValueError("positive and negative histograms must have the same number of bins")
    if pos.sum() <= 0 or neg.sum() <= 0:
        return float("nan")
    # One weighted sample per bin: sklearn's ROC area counts tied scores (same bin) as 1/2,
    # which is exactly the Mann-Whitney statistic on the binned scores.
    bins = np.arange(pos.size, dtype=np.float64)
    return float(
        roc_auc_score(
            np.concatenate([np.ones(pos.size), np.zeros(neg.size)]),
            np.concatenate([bins, bins]),
            sample_weight=np.concatenate([pos, neg]),
        )
    )


def _macro(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def finalize_classification(
    combined: Mapping[str, float], histograms: Mapping[str, Sequence[float]]
) -> dict[str, float]:
    """``accuracy``, ``sensitivity``, ``specificity``, ``f1``, ``auc`` and ``cases``.

    Binary problems report class 1 as positive. With more classes, sensitivity, specificity,
    F1 and AUC are macro one-vs-rest averages over the classes where they are defined (a class
    with a zero denominator, or without positives or negatives for AUC, is left out); a metric
    defined for no class is NaN.
    """
    n_cells = sum(1 for key in combined if key.startswith(CM_PREFIX))
    num_classes = math.isqrt(n_cells)
    if num_classes < 2 or num_classes * num_classes != n_cells:
        raise ValueError(f"combined must hold a square confusion matrix, got {n_cells} cm_ keys")
    cm = np.zeros((num_classes, num_classes), dtype=np.float64)
    for i, j in np.ndindex(num_classes, num_classes):
        key = confusion_key(i, j)
        if key not in combined:
            raise ValueError(f"combined is missing the key {key!r}")
        cm[i, j] = combined[key]
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    scored = [1] if num_classes == 2 else list(range(num_classes))
    aucs = []
    for c in scored:
        for key in (positive_histogram_key(c), negative_histogram_key(c)):
            if key not in histograms:
                raise ValueError(f"histograms is missing the key {key!r}")
        aucs.append(
            _histogram_auc(
                histograms[positive_histogram_key(c)],
                histograms[negative_histogram_key(c)],
            )
        )
    auc_values = np.asarray(aucs, dtype=np.float64)
    select = slice(1, 2) if num_classes == 2 else slice(None)
    return {
        ACCURACY: ratio(float(tp.sum()), float(total)),
        SENSITIVITY: _macro(sensitivity[select]),
        SPECIFICITY: _macro(specificity[select]),
        F1: _macro(f1[select]),
        AUC: _macro(auc_values),
        CASES: float(total),
    }
