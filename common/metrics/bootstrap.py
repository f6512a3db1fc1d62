"""Bootstrap confidence intervals built only from what a site may send.

Nothing per case leaves a site, so the intervals are computed in two ways:

* segmentation: the site resamples its own cases (`case_weights`, drawn from the operating
  system's entropy, never from a seed the server knows) and sends, per replicate, the sum
  and count of each per-case metric (`segmentation_replicates`). The server turns the
  replicates into a site's interval, or adds them across sites, replicate by replicate,
  for a pooled interval (a bootstrap stratified by site: `pooled_ratios`).
* classification: the confusion counts and score histograms the sites already send are
  multinomial counts of cases, so the server resamples them itself
  (`classification_replicates`); pooling again resamples within each site.

Intervals are percentile intervals (`percentile_interval`) at `LEVEL` over `REPLICATES`
replicates. For more than two classes each class's one-vs-rest histograms are resampled on
their own (an approximation: the classes' AUCs are not resampled jointly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from consortia.common.metrics.base import (
    ACCURACY,
    AUC,
    CM_PREFIX,
    F1,
    SENSITIVITY,
    SPECIFICITY,
    confusion_key,
    negative_histogram_key,
    positive_histogram_key,
)
from consortia.common.metrics.classification import BALANCED_ACCURACY

__all__ = [
    "LEVEL",
    "MIN_DEFINED_FRACTION",
    "REPLICATES",
    "ClassificationSample",
    "case_weights",
    "classification_replicates",
    "count_key",
    "percentile_interval",
    "pooled_ratios",
    "segmentation_replicates",
    "sum_key",
]

REPLICATES: Final = 1000
LEVEL: Final = 0.95
# An interval needs the metric defined in at least this share of the replicates.
MIN_DEFINED_FRACTION: Final = 0.9

# One site's confusion counts and histograms: (summary, histograms) as the sites send them.
ClassificationSample = tuple[Mapping[str, float], Mapping[str, Sequence[float]]]


def sum_key(metric: str) -> str:
    """Replicate key of a metric's per-replicate sums, e.g. ``dice_sum``."""
    return f"{metric}_sum"


def count_key(metric: str) -> str:
    """Replicate key of a metric's per-replicate counts, e.g. ``dice_count``."""
    return f"{metric}_count"


def case_weights(num_cases: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """How often each case is drawn in each replicate: ``(replicates, num_cases)`` counts,
    each row a multinomial draw of `num_cases` cases with replacement."""
    if num_cases < 0 or replicates < 1:
        raise ValueError(f"need num_cases >= 0 and replicates >= 1, got {num_cases}, {replicates}")
    if num_cases == 0:
        return np.zeros((replicates, 0), dtype=np.float64)
    probabilities = np.full(num_cases, 1.0 / num_cases)
    return rng.multinomial(num_cases, probabilities, size=replicates).astype(np.float64)


def segmentation_replicates(
    case_values: Mapping[str, np.ndarray],
    replicates: int = REPLICATES,
    rng: np.random.Generator | None = None,
) -> dict[str, list[float]]:
    """Per replicate, the sum and count of each per-case metric over resampled cases.

    `case_values` maps a metric to one value per case, NaN where the metric is undefined
    for that case (the same cases for every metric). Returns ``{metric}_sum`` and
    ``{metric}_count`` lists of `replicates` numbers: aggregates, not case values. The
    resampling uses the operating system's entropy unless `rng` is given (tests)."""
    arrays = {key: np.asarray(values, dtype=np.float64) for key, values in case_values.items()}
    sizes = {array.shape for array in arrays.values()}
    if len(sizes) > 1 or any(len(shape) != 1 for shape in sizes):
        raise ValueError(f"case values must be 1-D and of one length, got shapes {sizes}")
    num_cases = next(iter(sizes))[0] if sizes else 0
    weights = case_weights(num_cases, replicates, rng or np.random.default_rng())
    result: dict[str, list[float]] = {}
    for key, values in arrays.items():
        defined = ~np.isnan(values)
        result[sum_key(key)] = (weights @ np.where(defined, values, 0.0)).tolist()
        result[count_key(key)] = (weights @ defined.astype(np.float64)).tolist()
    return result


def pooled_ratios(sites: Sequence[Mapping[str, Sequence[float]]], metric: str) -> np.ndarray:
    """Per replicate, the metric's mean over all given sites' resampled cases (sums added
    before dividing); NaN where no case defines it. Sites must send equally many
    replicates."""
    if not sites:
        raise ValueError("no site replicates to pool")
    sums = [np.asarray(site[sum_key(metric)], dtype=np.float64) for site in sites]
    counts = [np.asarray(site[count_key(metric)], dtype=np.float64) for site in sites]
    shapes = {array.shape for array in (*sums, *counts)}
    if len(shapes) != 1:
        raise ValueError(f"{metric}: sites sent different numbers of replicates {shapes}")
    total, count = np.sum(sums, axis=0), np.sum(counts, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1.0), np.nan)


def _num_classes(summary: Mapping[str, float]) -> int:
    cells = sum(1 for key in summary if key.startswith(CM_PREFIX))
    classes = math.isqrt(cells)
    if classes < 2 or classes * classes != cells:
        raise ValueError(f"a square confusion matrix is needed, got {cells} {CM_PREFIX} keys")
    return classes


def _resample_counts(counts: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Multinomial resampling of cases binned into cells: ``(replicates, cells)``."""
    total = round(float(counts.sum()))
    if total <= 0:
        return np.zeros((replicates, counts.size))
    return rng.multinomial(total, counts / counts.sum(), size=replicates).astype(np.float64)


def _histogram_auc(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per replicate from binned scores ``(replicates, bins)``; ties in a
    bin count one half (as `finalize_classification` does)."""
    below = np.cumsum(negative, axis=1) - negative
    wins = np.sum(positive * (below + 0.5 * negative), axis=1)
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def _macro(values: np.ndarray) -> np.ndarray:
    """Mean over classes (axis 1) of the defined values; NaN where none is."""
    defined = ~np.isnan(values)
    count = defined.sum(axis=1)
    total = np.where(defined, values, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def classification_replicates(
    samples: Sequence[ClassificationSample],
    replicates: int = REPLICATES,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, sensitivity, specificity, F1 and AUC per replicate,
    each site's cases resampled from its own confusion counts and histograms, then pooled."""
    if not samples:
        raise ValueError("no site evaluation to resample")
    rng = rng or np.random.default_rng()
    classes = _num_classes(samples[0][0])
    keys = [confusion_key(i, j) for i in range(classes) for j in range(classes)]
    scored = [1] if classes == 2 else list(range(classes))
    cm = np.zeros((replicates, classes, classes))
    positive: dict[int, np.ndarray] = {}
    negative: dict[int, np.ndarray] = {}
    for summary, histograms in samples:
        if _num_classes(summary) != classes:
            raise ValueError("sites report confusion matrices of different sizes")
        counts = np.array([float(summary[key]) for key in keys])
        cm += _resample_counts(counts, replicates, rng).reshape(replicates, classes, classes)
        for c in scored:
            pos = np.asarray(histograms[positive_histogram_key(c)], dtype=np.float64)
            neg = np.asarray(histograms[negative_histogram_key(c)], dtype=np.float64)
            drawn = _resample_counts(np.concatenate([pos, neg]), replicates, rng)
            positive[c] = positive.get(c, 0.0) + drawn[:, : pos.size]
            negative[c] = negative.get(c, 0.0) + drawn[:, pos.size :]
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    fp, fn = cm.sum(axis=1) - tp, cm.sum(axis=2) - tp
    tn = total[:, None] - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        accuracy = np.where(total > 0, tp.sum(axis=1) / np.where(total > 0, total, 1), np.nan)
    columns = np.asarray(scored)
    aucs = np.stack([_histogram_auc(positive[c], negative[c]) for c in scored], axis=1)
    return {
        ACCURACY: accuracy,
        BALANCED_ACCURACY: _macro(sensitivity),  # mean recall over the classes present
        SENSITIVITY: _macro(sensitivity[:, columns]),
        SPECIFICITY: _macro(specificity[:, columns]),
        F1: _macro(f1[:, columns]),
        AUC: _macro(aucs),
    }


def percentile_interval(
    replicates: np.ndarray | Sequence[float], level: float = LEVEL
) -> tuple[float, float] | None:
    """The percentile bootstrap interval at `level`, or None when the metric is undefined
    in more than 1 - `MIN_DEFINED_FRACTION` of the replicates."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    values = np.asarray(replicates, dtype=np.float64)
    defined = values[np.isfinite(values)]
    if values.size == 0 or defined.size < MIN_DEFINED_FRACTION * values.size:
        return None
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(defined, [tail, 1.0 - tail])
    return float(low), float(high)
