"""Shared pieces of the metrics: key names, input checks, and exact pooling of the
sites' sums, counts and histograms. See `consortia.common.metrics.exact`."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "ACCURACY",
    "ASD",
    "ASD_COUNT",
    "ASD_SUM",
    "ASD_UNDEFINED",
    "AUC",
    "CASES",
    "CM_PREFIX",
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
    "Spacing",
    "check_int",
    "check_labels",
    "class_dice_count_key",
    "class_dice_key",
    "class_dice_sum_key",
    "combine",
    "combine_histograms",
    "confusion_key",
    "negative_histogram_key",
    "positive_histogram_key",
    "ratio",
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
CM_PREFIX = "cm_"

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
    return f"{CM_PREFIX}{true_label}_{predicted_label}"


def positive_histogram_key(label: int) -> str:
    """Histogram key of P(``label``) over cases whose target is ``label``."""
    return f"{AUC}_pos_hist_c{label}"


def negative_histogram_key(label: int) -> str:
    """Histogram key of P(``label``) over cases whose target is not ``label``."""
    return f"{AUC}_neg_hist_c{label}"


def check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_labels(name: str, labels: object, num_classes: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must hold labels in [0, {num_classes}), got values outside")
    return labels.detach().cpu()


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


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")
