"""Evaluation metrics whose per-site results combine *exactly* at the server.

Sites never send means: each accumulator's ``summary()`` holds only sums and counts (and, for
AUC, score histograms), the server adds them key-wise with :func:`combine` /
:func:`combine_histograms`, and only then divides (:func:`finalize_segmentation`,
:func:`finalize_classification`). Splitting a data set across sites therefore gives the same
result as evaluating it in one place (up to float rounding; AUC up to the histogram binning).

Segmentation (per case, then summed over cases): MONAI's Dice, IoU, 95th-percentile Hausdorff
distance and symmetric average surface distance, computed per evaluated class (foreground only
unless ``include_background``) and averaged over the classes of that case. Per case and class:

* prediction and target both empty: the class is left out of that case's mean; a case whose
  classes are all left out is not counted (``*_count`` does not grow).
* exactly one of prediction and target empty: Dice and IoU are 0; the surface distances are
  undefined (infinite), so the whole case is left out of ``hd95_*``/``asd_*`` and counted in
  ``hd95_undefined``/``asd_undefined`` instead.

Classification: a confusion matrix (``cm_{true}_{pred}``, prediction = argmax of the
probabilities) and, per scored class, histograms of that class's probability for positive and
negative cases, from which AUC is the Mann-Whitney statistic with pairs in the same bin
counted 1/2. Its error against the exact AUC is at most half the fraction of
(positive, negative) pairs that share a bin. Binary problems score class 1 only.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics.hausdorff_distance import compute_hausdorff_distance
from monai.metrics.meandice import compute_dice
from monai.metrics.meaniou import compute_iou
from monai.metrics.surface_distance import compute_average_surface_distance
from monai.networks.utils import one_hot
from sklearn.metrics import confusion_matrix, roc_auc_score

__all__ = [
    "ACCURACY",
    "ASD",
    "ASD_COUNT",
    "ASD_SUM",
    "ASD_UNDEFINED",
    "AUC",
    "CASES",
    "DICE",
    "DICE_COUNT",
    "DICE_SUM",
    "F1",
    "HD95",
    "HD95_COUNT",
    "HD95_SUM",
    "HD95_UNDEFINED",
    "IOU",
    "IOU_COUNT",
    "IOU_SUM",
    "SENSITIVITY",
    "SPECIFICITY",
    "ClassificationMetricAccumulator",
    "SegmentationMetricAccumulator",
    "class_dice_count_key",
    "class_dice_key",
    "class_dice_sum_key",
    "combine",
    "combine_histograms",
    "compute_classification_summary",
    "compute_segmentation_summary",
    "confusion_key",
    "finalize_classification",
    "finalize_segmentation",
    "negative_histogram_key",
    "positive_histogram_key",
]

logger = logging.getLogger(__name__)

CASES = "cases"
DICE, IOU, HD95, ASD = "dice", "iou", "hd95", "asd"
DICE_SUM, DICE_COUNT = f"{DICE}_sum", f"{DICE}_count"
IOU_SUM, IOU_COUNT = f"{IOU}_sum", f"{IOU}_count"
HD95_SUM, HD95_COUNT, HD95_UNDEFINED = (
    f"{HD95}_sum",
    f"{HD95}_count",
    f"{HD95}_undefined",
)
ASD_SUM, ASD_COUNT, ASD_UNDEFINED = f"{ASD}_sum", f"{ASD}_count", f"{ASD}_undefined"
ACCURACY, SENSITIVITY, SPECIFICITY, F1, AUC = (
    "accuracy",
    "sensitivity",
    "specificity",
    "f1",
    "auc",
)
_CM_PREFIX = "cm_"
_EMPTY_SURFACE_WARNING = r".*this may result in nan/inf distance.*"

Spacing = float | Sequence[float] | None


def class_dice_sum_key(label: int) -> str:
    """Summary key of the per-class Dice sum, e.g. ``dice_sum_c1``."""
    return f"{DICE_SUM}_c{label}"


def class_dice_count_key(label: int) -> str:
    """Summary key of the per-class Dice count, e.g. ``dice_count_c1``."""
    return f"{DICE_COUNT}_c{label}"


def class_dice_key(label: int) -> str:
    """Finalized key of the per-class mean Dice, e.g. ``dice_c1``."""
    return f"{DICE}_c{label}"


def confusion_key(true_label: int, predicted_label: int) -> str:
    """Summary key of one confusion-matrix cell, e.g. ``cm_1_0`` (true 1, predicted 0)."""
    return f"{_CM_PREFIX}{true_label}_{predicted_label}"


def positive_histogram_key(label: int) -> str:
    """Histogram key of P(``label``) over cases whose target is ``label``."""
    return f"{AUC}_pos_hist_c{label}"


def negative_histogram_key(label: int) -> str:
    """Histogram key of P(``label``) over cases whose target is not ``label``."""
    return f"{AUC}_neg_hist_c{label}"


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_labels(name: str, labels: object, num_classes: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must hold labels in [0, {num_classes}), got values outside")
    return labels.detach().cpu()


class SegmentationMetricAccumulator:
    """Accumulates Dice, IoU, HD95 and ASD sums and counts over cases (see module docstring).

    Args:
        num_classes: number of labels including background (at least 2).
        include_background: also evaluate label 0.
        spacing: voxel spacing for the surface distances (one number or one per axis);
            ``None`` means unit spacing.
        surface_distances: compute HD95 and ASD (distance transforms: the costly part);
            when False their sums and counts stay 0, so they finalize to NaN.
    """

    def __init__(
        self,
        num_classes: int,
        include_background: bool = False,
        spacing: Spacing = None,
        surface_distances: bool = True,
    ) -> None:
        _check_int("num_classes", num_classes, 2)
        if not isinstance(include_background, bool):
            raise TypeError("include_background must be a bool")
        if spacing is not None:
            values = [spacing] if isinstance(spacing, int | float) else list(spacing)
            if not values or not all(isinstance(v, int | float) and v > 0 for v in values):
                raise ValueError(f"spacing must be positive numbers, got {spacing!r}")
        self.num_classes = num_classes
        self.include_background = include_background
        self.spacing = spacing
        self.surface_distances = surface_distances
        self._first_label = 0 if include_background else 1
        self.reset()

    def reset(self) -> None:
        """Forget every case seen so far."""
        self._cases = 0
        self._values: dict[str, list[float]] = {DICE: [], IOU: [], HD95: [], ASD: []}
        self._undefined = {HD95: 0, ASD: 0}
        self._class_dice: dict[int, list[float]] = {
            label: [] for label in range(self._first_label, self.num_classes)
        }

    def update(self, pred_labels: torch.Tensor, target_labels: torch.Tensor) -> None:
        """Add a batch of label maps, shape ``(B, H, W)`` or ``(B, D, H, W)``, integer dtype."""
        pred = _check_labels("pred_labels", pred_labels, self.num_classes)
        target = _check_labels("target_labels", target_labels, self.num_classes)
        if pred.shape != target.shape:
            raise ValueError(
                f"pred_labels shape {tuple(pred.shape)} != target_labels shape "
                f"{tuple(target.shape)}"
            )
        if pred.ndim not in (3, 4):
            raise ValueError(f"pred_labels must be (B, H, W) or (B, D, H, W), got {pred.ndim}D")
        if pred.shape[0] == 0:
            return
        pred_1h = one_hot(pred.unsqueeze(1), self.num_classes, dtype=torch.float64)
        target_1h = one_hot(target.unsqueeze(1), self.num_classes, dtype=torch.float64)
        spatial = tuple(range(2, pred_1h.ndim))
        first = self._first_label
        pred_present = pred_1h.sum(dim=spatial)[:, first:] > 0
        target_present = target_1h.sum(dim=spatial)[:, first:] > 0
        both_empty = ~pred_present & ~target_present
        one_empty = pred_present ^ target_present
        nan = torch.tensor(float("nan"), dtype=torch.float64)

        dice = compute_dice(pred_1h, target_1h, self.include_background, ignore_empty=False)
        iou = compute_iou(pred_1h, target_1h, self.include_background, ignore_empty=False)
        dice = torch.where(both_empty, nan, dice.double())
        iou = torch.where(both_empty, nan, iou.double())
        surfaces: dict[int, tuple[tuple[str, torch.Tensor], ...]] = {}
        if self.surface_distances:
            hd, asd = self._surface_distances(pred_1h, target_1h)
            surfaces = {case: ((HD95, hd[case]), (ASD, asd[case])) for case in range(len(hd))}

        for case in range(pred.shape[0]):
            self._cases += 1
            self._add_mean(DICE, dice[case])
            self._add_mean(IOU, iou[case])
            for key, values in surfaces.get(case, ()):
                valid = ~both_empty[case]
                if bool((one_empty[case] | (valid & ~torch.isfinite(values))).any()):
                    self._undefined[key] += 1
                else:
                    self._add_mean(key, torch.where(valid, values, nan))
            for offset, label in enumerate(range(first, self.num_classes)):
                value = float(dice[case, offset])
                if not math.isnan(value):
                    self._class_dice[label].append(value)

    def _surface_distances(
        self, pred_1h: torch.Tensor, target_1h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_EMPTY_SURFACE_WARNING)
            # MONAI 1.5/1.6 pass a deprecated argument to their own get_mask_edges.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            hd = compute_hausdorff_distance(
                pred_1h,
                target_1h,
                self.include_background,
                percentile=95,
                spacing=self.spacing,
            ).double()
            asd = compute_average_surface_distance(
                pred_1h,
                target_1h,
                self.include_background,
                symmetric=True,
                spacing=self.spacing,
            ).double()
        return hd, asd

    def _add_mean(self, key: str, per_class: torch.Tensor) -> None:
        if bool(torch.isnan(per_class).all()):
            return
        self._values[key].append(float(torch.nanmean(per_class)))

    def summary(self) -> dict[str, float]:
        """Sums and counts only (never means), ready for :func:`combine`."""
        result: dict[str, float] = {CASES: float(self._cases)}
        for key, sum_key, count_key in (
            (DICE, DICE_SUM, DICE_COUNT),
            (IOU, IOU_SUM, IOU_COUNT),
            (HD95, HD95_SUM, HD95_COUNT),
            (ASD, ASD_SUM, ASD_COUNT),
        ):
            result[sum_key] = math.fsum(self._values[key])
            result[count_key] = float(len(self._values[key]))
        result[HD95_UNDEFINED] = float(self._undefined[HD95])
        result[ASD_UNDEFINED] = float(self._undefined[ASD])
        for label, values in self._class_dice.items():
            result[class_dice_sum_key(label)] = math.fsum(values)
            result[class_dice_count_key(label)] = float(len(values))
        return result


class ClassificationMetricAccumulator:
    """Accumulates a confusion matrix and per-class score histograms (for AUC).

    Args:
        num_classes: number of classes (at least 2; 2 means binary with positive class 1).
        auc_bins: histogram bins over ``[0, 1]`` for the AUC.
    """

    def __init__(self, num_classes: int, auc_bins: int = 1000) -> None:
        _check_int("num_classes", num_classes, 2)
        _check_int("auc_bins", auc_bins, 1)
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
        target = _check_labels("targets", targets, self.num_classes)
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


def compute_segmentation_summary(
    pred_labels: torch.Tensor,
    target_labels: torch.Tensor,
    num_classes: int,
    include_background: bool = False,
    spacing: Spacing = None,
) -> dict[str, float]:
    """Functional form of :class:`SegmentationMetricAccumulator` for one batch."""
    accumulator = SegmentationMetricAccumulator(num_classes, include_background, spacing)
    accumulator.update(pred_labels, target_labels)
    return accumulator.summary()


def compute_classification_summary(
    probs: torch.Tensor, targets: torch.Tensor, auc_bins: int = 1000
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Functional form of :class:`ClassificationMetricAccumulator`: (summary, histograms)."""
    if not isinstance(probs, torch.Tensor) or probs.ndim != 2:
        raise ValueError("probs must be a (B, C) torch.Tensor")
    accumulator = ClassificationMetricAccumulator(int(probs.shape[1]), auc_bins)
    accumulator.update(probs, targets)
    return accumulator.summary(), accumulator.histograms()


def combine(summaries: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Add per-site summaries key-wise (a key missing at a site counts as 0)."""
    values: dict[str, list[float]] = {}
    for index, summary in enumerate(summaries):
        for key, value in summary.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"summaries[{index}][{key!r}] must be a real number")
            if not math.isfinite(value):
                raise ValueError(f"summaries[{index}][{key!r}] must be finite, got {value}")
            values.setdefault(key, []).append(float(value))
    logger.debug("combined %d summaries with %d keys", len(summaries), len(values))
    return {key: math.fsum(parts) for key, parts in values.items()}


def combine_histograms(
    histograms: Sequence[Mapping[str, Sequence[float]]],
) -> dict[str, list[float]]:
    """Add per-site histograms bin-wise; every site must use the same number of bins."""
    result: dict[str, np.ndarray] = {}
    for index, site in enumerate(histograms):
        for key, counts in site.items():
            array = np.asarray(counts, dtype=np.float64)
            if array.ndim != 1 or not np.all(np.isfinite(array)) or np.any(array < 0):
                raise ValueError(f"histograms[{index}][{key!r}] must be non-negative counts")
            if key in result and result[key].shape != array.shape:
                raise ValueError(
                    f"histograms[{index}][{key!r}] has {array.size} bins, "
                    f"expected {result[key].size}"
                )
            result[key] = result[key] + array if key in result else array
    return {key: array.tolist() for key, array in result.items()}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def finalize_segmentation(combined: Mapping[str, float]) -> dict[str, float]:
    """Means from combined sums/counts: ``dice``, ``iou``, ``hd95``, ``asd``, ``dice_c{k}``.

    Means are NaN when their count is 0; ``cases``, ``hd95_undefined`` and
    ``asd_undefined`` are passed through.
    """
    for key in (
        DICE_SUM,
        DICE_COUNT,
        IOU_SUM,
        IOU_COUNT,
        HD95_SUM,
        HD95_COUNT,
        ASD_SUM,
        ASD_COUNT,
    ):
        if key not in combined:
            raise ValueError(f"combined is missing the key {key!r}")
    result = {
        DICE: _ratio(combined[DICE_SUM], combined[DICE_COUNT]),
        IOU: _ratio(combined[IOU_SUM], combined[IOU_COUNT]),
        HD95: _ratio(combined[HD95_SUM], combined[HD95_COUNT]),
        ASD: _ratio(combined[ASD_SUM], combined[ASD_COUNT]),
    }
    for key in (CASES, HD95_UNDEFINED, ASD_UNDEFINED):
        result[key] = float(combined.get(key, 0.0))
    prefix = f"{DICE_SUM}_c"
    for key in combined:
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            label = int(key[len(prefix) :])
            count = combined.get(class_dice_count_key(label), 0.0)
            result[class_dice_key(label)] = _ratio(combined[key], count)
    return result


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
    n_cells = sum(1 for key in combined if key.startswith(_CM_PREFIX))
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
        ACCURACY: _ratio(float(tp.sum()), float(total)),
        SENSITIVITY: _macro(sensitivity[select]),
        SPECIFICITY: _macro(specificity[select]),
        F1: _macro(f1[select]),
        AUC: _macro(auc_values),
        CASES: float(total),
    }
