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

from consortia.common.metrics.base import (
    ACCURACY,
    ASD,
    ASD_COUNT,
    ASD_SUM,
    ASD_UNDEFINED,
    AUC,
    CASES,
    DICE,
    DICE_COUNT,
    DICE_SUM,
    F1,
    HD95,
    HD95_COUNT,
    HD95_SUM,
    HD95_UNDEFINED,
    IOU,
    IOU_COUNT,
    IOU_SUM,
    SENSITIVITY,
    SPECIFICITY,
    class_dice_count_key,
    class_dice_key,
    class_dice_sum_key,
    combine,
    combine_histograms,
    confusion_key,
    negative_histogram_key,
    positive_histogram_key,
)
from consortia.common.metrics.classification import (
    ClassificationMetricAccumulator,
    compute_classification_summary,
    finalize_classification,
)
from consortia.common.metrics.segmentation import (
    SegmentationMetricAccumulator,
    compute_segmentation_summary,
    finalize_segmentation,
)

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
