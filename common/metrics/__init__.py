"""Evaluation metrics whose per-site sums and counts combine exactly at the server.

The modules, one concept each:

- ``base``: Shared pieces of the metrics: key names, input checks, and exact pooling of the
  sites' sums, counts and histograms.
- ``bootstrap``: Bootstrap confidence intervals built only from what a site may send.
- ``classification``: Classification metrics (confusion counts, AUC from score histograms,
  balanced accuracy) per site.
- ``exact``: Evaluation metrics whose per-site results combine *exactly* at the server.
- ``segmentation``: Segmentation metrics (MONAI Dice, IoU, HD95, ASD) as sums and counts per
  site.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.common.metrics.base import (
        ACCURACY as ACCURACY,
    )
    from consortia.common.metrics.base import (
        ASD as ASD,
    )
    from consortia.common.metrics.base import (
        ASD_COUNT as ASD_COUNT,
    )
    from consortia.common.metrics.base import (
        ASD_SUM as ASD_SUM,
    )
    from consortia.common.metrics.base import (
        ASD_UNDEFINED as ASD_UNDEFINED,
    )
    from consortia.common.metrics.base import (
        AUC as AUC,
    )
    from consortia.common.metrics.base import (
        CASES as CASES,
    )
    from consortia.common.metrics.base import (
        CM_PREFIX as CM_PREFIX,
    )
    from consortia.common.metrics.base import (
        DICE as DICE,
    )
    from consortia.common.metrics.base import (
        DICE_COUNT as DICE_COUNT,
    )
    from consortia.common.metrics.base import (
        DICE_SUM as DICE_SUM,
    )
    from consortia.common.metrics.base import (
        F1 as F1,
    )
    from consortia.common.metrics.base import (
        HD95 as HD95,
    )
    from consortia.common.metrics.base import (
        HD95_COUNT as HD95_COUNT,
    )
    from consortia.common.metrics.base import (
        HD95_SUM as HD95_SUM,
    )
    from consortia.common.metrics.base import (
        HD95_UNDEFINED as HD95_UNDEFINED,
    )
    from consortia.common.metrics.base import (
        IOU as IOU,
    )
    from consortia.common.metrics.base import (
        IOU_COUNT as IOU_COUNT,
    )
    from consortia.common.metrics.base import (
        IOU_SUM as IOU_SUM,
    )
    from consortia.common.metrics.base import (
        SENSITIVITY as SENSITIVITY,
    )
    from consortia.common.metrics.base import (
        SPECIFICITY as SPECIFICITY,
    )
    from consortia.common.metrics.base import (
        Spacing as Spacing,
    )
    from consortia.common.metrics.base import (
        check_int as check_int,
    )
    from consortia.common.metrics.base import (
        check_labels as check_labels,
    )
    from consortia.common.metrics.base import (
        class_dice_count_key as class_dice_count_key,
    )
    from consortia.common.metrics.base import (
        class_dice_key as class_dice_key,
    )
    from consortia.common.metrics.base import (
        class_dice_sum_key as class_dice_sum_key,
    )
    from consortia.common.metrics.base import (
        combine as combine,
    )
    from consortia.common.metrics.base import (
        combine_histograms as combine_histograms,
    )
    from consortia.common.metrics.base import (
        confusion_key as confusion_key,
    )
    from consortia.common.metrics.base import (
        negative_histogram_key as negative_histogram_key,
    )
    from consortia.common.metrics.base import (
        positive_histogram_key as positive_histogram_key,
    )
    from consortia.common.metrics.base import (
        ratio as ratio,
    )
    from consortia.common.metrics.bootstrap import (
        LEVEL as LEVEL,
    )
    from consortia.common.metrics.bootstrap import (
        MIN_DEFINED_FRACTION as MIN_DEFINED_FRACTION,
    )
    from consortia.common.metrics.bootstrap import (
        REPLICATES as REPLICATES,
    )
    from consortia.common.metrics.bootstrap import (
        ClassificationSample as ClassificationSample,
    )
    from consortia.common.metrics.bootstrap import (
        case_weights as case_weights,
    )
    from consortia.common.metrics.bootstrap import (
        classification_replicates as classification_replicates,
    )
    from consortia.common.metrics.bootstrap import (
        count_key as count_key,
    )
    from consortia.common.metrics.bootstrap import (
        percentile_interval as percentile_interval,
    )
    from consortia.common.metrics.bootstrap import (
        pooled_ratios as pooled_ratios,
    )
    from consortia.common.metrics.bootstrap import (
        segmentation_replicates as segmentation_replicates,
    )
    from consortia.common.metrics.bootstrap import (
        sum_key as sum_key,
    )
    from consortia.common.metrics.classification import (
        AUC_BIN_TOLERANCE as AUC_BIN_TOLERANCE,
    )
    from consortia.common.metrics.classification import (
        AUC_BINS as AUC_BINS,
    )
    from consortia.common.metrics.classification import (
        AUC_EVEN_BINS as AUC_EVEN_BINS,
    )
    from consortia.common.metrics.classification import (
        AUC_LOGIT_RANGE as AUC_LOGIT_RANGE,
    )
    from consortia.common.metrics.classification import (
        AUC_TAIL_EDGES as AUC_TAIL_EDGES,
    )
    from consortia.common.metrics.classification import (
        BALANCED_ACCURACY as BALANCED_ACCURACY,
    )
    from consortia.common.metrics.classification import (
        BalancedAccuracyMetric as BalancedAccuracyMetric,
    )
    from consortia.common.metrics.classification import (
        ClassificationMetricAccumulator as ClassificationMetricAccumulator,
    )
    from consortia.common.metrics.classification import (
        auc_bin_edges as auc_bin_edges,
    )
    from consortia.common.metrics.classification import (
        balanced_accuracy as balanced_accuracy,
    )
    from consortia.common.metrics.classification import (
        compute_classification_summary as compute_classification_summary,
    )
    from consortia.common.metrics.classification import (
        finalize_classification as finalize_classification,
    )
    from consortia.common.metrics.exact import (
        SegmentationMetricAccumulator as SegmentationMetricAccumulator,
    )
    from consortia.common.metrics.exact import (
        compute_segmentation_summary as compute_segmentation_summary,
    )
    from consortia.common.metrics.exact import (
        finalize_segmentation as finalize_segmentation,
    )

__all__ = [
    "ACCURACY",
    "ASD",
    "ASD_COUNT",
    "ASD_SUM",
    "ASD_UNDEFINED",
    "AUC",
    "AUC_BINS",
    "AUC_BIN_TOLERANCE",
    "AUC_EVEN_BINS",
    "AUC_LOGIT_RANGE",
    "AUC_TAIL_EDGES",
    "BALANCED_ACCURACY",
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
    "LEVEL",
    "MIN_DEFINED_FRACTION",
    "REPLICATES",
    "SENSITIVITY",
    "SPECIFICITY",
    "BalancedAccuracyMetric",
    "ClassificationMetricAccumulator",
    "ClassificationSample",
    "SegmentationMetricAccumulator",
    "Spacing",
    "auc_bin_edges",
    "balanced_accuracy",
    "case_weights",
    "check_int",
    "check_labels",
    "class_dice_count_key",
    "class_dice_key",
    "class_dice_sum_key",
    "classification_replicates",
    "combine",
    "combine_histograms",
    "compute_classification_summary",
    "compute_segmentation_summary",
    "confusion_key",
    "count_key",
    "finalize_classification",
    "finalize_segmentation",
    "negative_histogram_key",
    "percentile_interval",
    "pooled_ratios",
    "positive_histogram_key",
    "ratio",
    "segmentation_replicates",
    "sum_key",
]

_EXPORTS = {
    "ACCURACY": "base",
    "ASD": "base",
    "ASD_COUNT": "base",
    "ASD_SUM": "base",
    "ASD_UNDEFINED": "base",
    "AUC": "base",
    "AUC_BINS": "classification",
    "AUC_BIN_TOLERANCE": "classification",
    "AUC_EVEN_BINS": "classification",
    "AUC_LOGIT_RANGE": "classification",
    "AUC_TAIL_EDGES": "classification",
    "BALANCED_ACCURACY": "classification",
    "BalancedAccuracyMetric": "classification",
    "CASES": "base",
    "CM_PREFIX": "base",
    "ClassificationMetricAccumulator": "classification",
    "ClassificationSample": "bootstrap",
    "DICE": "base",
    "DICE_COUNT": "base",
    "DICE_SUM": "base",
    "F1": "base",
    "HD95": "base",
    "HD95_COUNT": "base",
    "HD95_SUM": "base",
    "HD95_UNDEFINED": "base",
    "IOU": "base",
    "IOU_COUNT": "base",
    "IOU_SUM": "base",
    "LEVEL": "bootstrap",
    "MIN_DEFINED_FRACTION": "bootstrap",
    "REPLICATES": "bootstrap",
    "SENSITIVITY": "base",
    "SPECIFICITY": "base",
    "SegmentationMetricAccumulator": "exact",
    "Spacing": "base",
    "auc_bin_edges": "classification",
    "balanced_accuracy": "classification",
    "case_weights": "bootstrap",
    "check_int": "base",
    "check_labels": "base",
    "class_dice_count_key": "base",
    "class_dice_key": "base",
    "class_dice_sum_key": "base",
    "classification_replicates": "bootstrap",
    "combine": "base",
    "combine_histograms": "base",
    "compute_classification_summary": "classification",
    "compute_segmentation_summary": "exact",
    "confusion_key": "base",
    "count_key": "bootstrap",
    "finalize_classification": "classification",
    "finalize_segmentation": "exact",
    "negative_histogram_key": "base",
    "percentile_interval": "bootstrap",
    "pooled_ratios": "bootstrap",
    "positive_histogram_key": "base",
    "ratio": "base",
    "segmentation_replicates": "bootstrap",
    "sum_key": "bootstrap",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
