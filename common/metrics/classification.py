"""Classification metrics (confusion counts, AUC from score histograms, balanced accuracy)
per site. See `consortia.common.metrics.exact`."""

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
    "AUC_BINS",
    "AUC_BIN_TOLERANCE",
    "AUC_EVEN_BINS",
    "AUC_LOGIT_RANGE",
    "AUC_TAIL_EDGES",
    "BALANCED_ACCURACY",
    "BalancedAccuracyMetric",
    "ClassificationMetricAccumulator",
    "auc_bin_edges",
    "balanced_accuracy",
    "compute_classification_summary",
    "finalize_classification",
]

#: Mean recall over the classes that occur (scikit-learn's `balanced_accuracy_score`).
BALANCED_ACCURACY = "balanced_accuracy"

#: Score bins a site sends per class and true label (red-team F4): 1000 equal bins let a
#: server-chosen model read about 10 bits per case from each evaluation; these 64 carry at
#: most 6. 48 equal bins over [0, 1], whose two outer bins are split further at
#: `AUC_TAIL_EDGES` points even in the logit up to `AUC_LOGIT_RANGE` (confident models
#: put most cases there). Measured on PneumoniaMNIST (tests/benchmarks/auc_bins.py,
#: docs/privacy.md): AUC error at most `AUC_BIN_TOLERANCE` unless every score sits in a
#: narrow band (an under-trained model), and smaller than 1000 equal bins' for confident
#: models.
AUC_EVEN_BINS = 48
AUC_TAIL_EDGES = 8
AUC_LOGIT_RANGE = 12.0
AUC_BINS = AUC_EVEN_BINS + 2 * AUC_TAIL_EDGES
#: The documented bound on |AUC from the bins - exact AUC| for models whose scores spread.
AUC_BIN_TOLERANCE = 0.01


def auc_bin_edges(
    even_bins: int = AUC_EVEN_BINS,
    tail_edges: int = AUC_TAIL_EDGES,
    logit_range: float = AUC_LOGIT_RANGE,
) -> np.ndarray:
    """The sorted inner edges of the site's score bins (``even_bins + 2 * tail_edges``
    bins): ``k / even_bins`` for k = 1 .. even_bins - 1, and in each outer bin
    `tail_edges` more at the sigmoid of ``±linspace(log(even_bins - 1), logit_range)``.
    A score equal to an edge falls in the upper bin."""
    check_int("even_bins", even_bins, 3)
    check_int("tail_edges", tail_edges, 0)
    if not (math.isfinite(logit_range) and logit_range > math.log(even_bins - 1)):
        raise ValueError(f"logit_range must be finite and > log(even_bins - 1), got {logit_range}")
    even = np.linspace(0.0, 1.0, even_bins + 1)[1:-1]
    steps = np.linspace(math.log(even_bins - 1), logit_range, tail_edges)
    tails = np.concatenate([1.0 / (1.0 + np.exp(steps)), 1.0 / (1.0 + np.exp(-steps))])
    return np.unique(np.concatenate([even, tails]).astype(np.float64))


class ClassificationMetricAccumulator:
    """Accumulates a confusion matrix and per-class score histograms (for AUC).

    Args:
        num_classes: number of classes (at least 2; 2 means binary with positive class 1).
        auc_bins: ``None`` (what a site sends, red-team F4): the `AUC_BINS` coarse bins of
            `auc_bin_edges`; a number: that many equal bins over ``[0, 1]`` (for local
            use and tests only).
    """

    def __init__(self, num_classes: int, auc_bins: int | None = None) -> None:
        check_int("num_classes", num_classes, 2)
        if auc_bins is not None:
            check_int("auc_bins", auc_bins, 1)
        self.num_classes = num_classes
        self._edges = auc_bin_edges() if auc_bins is None else None
        self.auc_bins = AUC_BINS if auc_bins is None else auc_bins
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
        if self._edges is not None:
            index = np.searchsorted(self._edges, scores, side="right")
            return np.bincount(index, minlength=self.auc_bins).astype(np.int64)
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
    probs: torch.Tensor, targets: torch.Tensor, auc_bins: int | None = None
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


def balanced_accuracy(confusion: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Balanced accuracy of a confusion matrix (rows: true class, columns: predicted): the
    mean recall over the classes with at least one case, as scikit-learn's
    `balanced_accuracy_score` (binary: the mean of sensitivity and specificity); NaN
    without cases."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 2:
        raise ValueError(f"confusion must be a square matrix of >= 2 classes, got {cm.shape}")
    if not np.all(np.isfinite(cm) & (cm >= 0)):
        raise ValueError("confusion must hold finite counts >= 0")
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


class BalancedAccuracyMetric:
    """Balanced accuracy accumulated over batches, MONAI-style (call on each batch, then
    `aggregate`, `reset`): `y_pred` holds class scores ``(B, C)`` (argmax is the
    prediction) or predicted labels ``(B,)``, `y` the labels ``(B,)``."""

    def __init__(self, num_classes: int) -> None:
        check_int("num_classes", num_classes, 2)
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forget every case seen so far."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def __call__(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch."""
        if not isinstance(y_pred, torch.Tensor):
            raise TypeError(f"y_pred must be a torch.Tensor, got {type(y_pred).__name__}")
        predicted = y_pred.argmax(dim=1) if y_pred.ndim == 2 else y_pred
        predicted = check_labels("y_pred", predicted, self.num_classes)
        target = check_labels("y", y, self.num_classes)
        if target.shape != predicted.shape or target.ndim != 1:
            raise ValueError(f"y must have shape ({predicted.shape[0]},), got {target.shape}")
        labels = np.arange(self.num_classes)
        self.confusion += confusion_matrix(target.numpy(), predicted.numpy(), labels=labels)

    def aggregate(self) -> float:
        """Balanced accuracy of every case added since the last `reset`."""
        return balanced_accuracy(self.confusion)


def _macro(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def finalize_classification(
    combined: Mapping[str, float], histograms: Mapping[str, Sequence[float]]
) -> dict[str, float]:
    """``accuracy``, ``balanced_accuracy``, ``sensitivity``, ``specificity``, ``f1``, ``auc``
    and ``cases``.

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
        BALANCED_ACCURACY: balanced_accuracy(cm),
        SENSITIVITY: _macro(sensitivity[select]),
        SPECIFICITY: _macro(specificity[select]),
        F1: _macro(f1[select]),
        AUC: _macro(auc_values),
        CASES: float(total),
    }
