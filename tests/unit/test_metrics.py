"""Tests for consortia.common.metrics.exact: hand-checked values and exact site-split
combination."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from consortia.common.metrics.exact import (
    ACCURACY,
    ASD,
    ASD_COUNT,
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
    ClassificationMetricAccumulator,
    SegmentationMetricAccumulator,
    class_dice_count_key,
    class_dice_key,
    class_dice_sum_key,
    combine,
    combine_histograms,
    compute_classification_summary,
    compute_segmentation_summary,
    confusion_key,
    finalize_classification,
    finalize_segmentation,
    negative_histogram_key,
    positive_histogram_key,
)

SITE_SPLITS = ((0, 3), (3, 4), (4, 12))  # uneven, one site with a single case


def _blob_labels(num_cases: int, size: int, dims: int, num_classes: int, seed: int) -> torch.Tensor:
    """Label maps with one random box per foreground class (sometimes left out)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((num_cases, *([size] * dims)), dtype=np.int64)
    for case in range(num_cases):
        for label in range(1, num_classes):
            if rng.random() < 0.2:
                continue
            lo = rng.integers(0, size - 2, dims)
            hi = lo + rng.integers(1, size // 2, dims)
            box: tuple[int | slice, ...] = (
                case,
                *(slice(a, b) for a, b in zip(lo, hi, strict=True)),
            )
            labels[box] = label
    return torch.from_numpy(labels)


def _assert_same(left: dict[str, float], right: dict[str, float]) -> None:
    assert left.keys() == right.keys()
    for key, value in left.items():
        if math.isnan(value):
            assert math.isnan(right[key]), key
        else:
            assert right[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("dims", [2, 3])
def test_perfect_prediction(dims: int) -> None:
    target = _blob_labels(3, 12, dims, 3, seed=dims)
    target[(0, *([1] * dims))] = 1  # make sure case 0 is not empty
    result = finalize_segmentation(compute_segmentation_summary(target, target.clone(), 3))
    assert result[DICE] == 1.0
    assert result[IOU] == 1.0
    assert result[HD95] == 0.0
    assert result[ASD] == 0.0
    assert result[CASES] == 3.0
    assert result[HD95_UNDEFINED] == 0.0


def test_hand_computed_case() -> None:
    pred = torch.zeros(2, 8, 8, dtype=torch.long)
    target = torch.zeros_like(pred)
    pred[0, 2:5, 2:5] = 1
    target[0, 2:5, 2:5] = 1  # case 0: class 1 perfect, class 2 absent from both
    pred[1, 1:3, 1:3] = 2  # case 1: class 2 is a 2x2 square inside a 3x2 target
    target[1, 1:4, 1:3] = 2
    summary = compute_segmentation_summary(pred, target, num_classes=3)
    # Dice 2*4/(4+6) = 0.8, IoU 4/6; the extra target row is 1 pixel from the prediction:
    # HD95 = 1; symmetric ASD = (4 pred edge px at 0 + 4 target px at 0 + 2 at 1) / 10 = 0.2.
    assert summary[DICE_SUM] == pytest.approx(1.0 + 0.8)
    assert summary[DICE_COUNT] == 2.0
    assert summary[HD95_SUM] == pytest.approx(0.0 + 1.0)
    assert summary[class_dice_sum_key(1)] == pytest.approx(1.0)
    assert summary[class_dice_count_key(1)] == 1.0
    assert summary[class_dice_count_key(2)] == 1.0
    result = finalize_segmentation(summary)
    assert result[DICE] == pytest.approx(0.9)
    assert result[IOU] == pytest.approx((1.0 + 4 / 6) / 2)
    assert result[HD95] == pytest.approx(0.5)
    assert result[ASD] == pytest.approx(0.1)
    assert result[class_dice_key(2)] == pytest.approx(0.8)


def test_spacing_scales_distances() -> None:
    pred = torch.zeros(1, 8, 8, dtype=torch.long)
    target = torch.zeros_like(pred)
    pred[0, 1:3, 1:3] = 1
    target[0, 1:4, 1:3] = 1
    unit = compute_segmentation_summary(pred, target, 2)
    scaled = compute_segmentation_summary(pred, target, 2, spacing=(2.0, 1.0))
    assert scaled[HD95_SUM] == pytest.approx(2 * unit[HD95_SUM])
    assert scaled[DICE_SUM] == unit[DICE_SUM]


def test_empty_masks() -> None:
    pred = torch.zeros(3, 6, 6, dtype=torch.long)
    target = torch.zeros_like(pred)
    # case 0: both empty -> not counted anywhere
    target[1, 2:4, 2:4] = 1  # case 1: prediction empty, target not
    pred[2, 2:4, 2:4] = 1  # case 2: target empty, prediction not
    summary = compute_segmentation_summary(pred, target, 2)
    assert summary[CASES] == 3.0
    assert summary[DICE_COUNT] == 2.0
    assert summary[DICE_SUM] == 0.0
    assert summary[IOU_COUNT] == 2.0
    assert summary[HD95_COUNT] == 0.0
    assert summary[ASD_COUNT] == 0.0
    assert summary[HD95_UNDEFINED] == 2.0
    assert summary[ASD_UNDEFINED] == 2.0
    result = finalize_segmentation(summary)
    assert result[DICE] == 0.0
    assert math.isnan(result[HD95])
    assert math.isnan(result[ASD])


def test_include_background_adds_class_zero() -> None:
    labels = _blob_labels(2, 8, 2, 2, seed=1)
    summary = compute_segmentation_summary(labels, labels, 2, include_background=True)
    assert summary[class_dice_sum_key(0)] == 2.0
    no_background = compute_segmentation_summary(labels, labels, 2)
    assert class_dice_sum_key(0) not in no_background


@pytest.mark.parametrize("dims", [2, 3])
def test_segmentation_site_split_equals_pooled(dims: int) -> None:
    size = 16 if dims == 2 else 10
    target = _blob_labels(12, size, dims, 3, seed=10 + dims)
    pred = _blob_labels(12, size, dims, 3, seed=20 + dims)
    pred[:6] = torch.where(torch.rand(target[:6].shape) < 0.9, target[:6], pred[:6])
    pooled = SegmentationMetricAccumulator(3, spacing=1.5)
    pooled.update(pred, target)
    sites = []
    for start, stop in SITE_SPLITS:
        site = SegmentationMetricAccumulator(3, spacing=1.5)
        for case in range(start, stop):  # different batching than the pooled run
            site.update(pred[case : case + 1], target[case : case + 1])
        sites.append(site.summary())
    combined = combine(sites)
    _assert_same(pooled.summary(), combined)
    _assert_same(finalize_segmentation(pooled.summary()), finalize_segmentation(combined))
    assert combined[CASES] == 12.0


def _probabilities(
    num_cases: int, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (num_cases,), generator=generator)
    logits = torch.randn(num_cases, num_classes, generator=generator)
    logits[torch.arange(num_cases), targets] += 1.0  # better than chance
    return torch.softmax(logits.double(), dim=1), targets


def _specificity(y_true: np.ndarray, y_pred: np.ndarray, label: int) -> float:
    return float(recall_score(y_true != label, y_pred != label))


@pytest.mark.parametrize("num_classes", [2, 4])
def test_classification_site_split_equals_pooled(num_classes: int) -> None:
    probs, targets = _probabilities(300, num_classes, seed=num_classes)
    bins = 1000
    splits = ((0, 70), (70, 71), (71, 300))
    sites = [compute_classification_summary(probs[a:b], targets[a:b], bins) for a, b in splits]
    combined = combine([summary for summary, _ in sites])
    histograms = combine_histograms([hist for _, hist in sites])
    pooled = ClassificationMetricAccumulator(num_classes, bins)
    pooled.update(probs, targets)
    assert combined == pooled.summary()
    assert histograms == pooled.histograms()
    result = finalize_classification(combined, histograms)

    y_true, y_prob = targets.numpy(), probs.numpy()
    y_pred = y_prob.argmax(axis=1)
    assert result[CASES] == 300.0
    assert result[ACCURACY] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    if num_classes == 2:
        expected_auc = roc_auc_score(y_true, y_prob[:, 1])
        assert result[SENSITIVITY] == pytest.approx(recall_score(y_true, y_pred), abs=1e-12)
        assert result[SPECIFICITY] == pytest.approx(_specificity(y_true, y_pred, 1), abs=1e-12)
        assert result[F1] == pytest.approx(f1_score(y_true, y_pred), abs=1e-12)
    else:
        expected_auc = roc_auc_score(y_true, y_prob, multi_class="ovr", average="macro")
        macro_recall = recall_score(y_true, y_pred, average="macro")
        specificity = np.mean([_specificity(y_true, y_pred, c) for c in range(num_classes)])
        assert result[SENSITIVITY] == pytest.approx(macro_recall, abs=1e-12)
        assert result[SPECIFICITY] == pytest.approx(specificity, abs=1e-12)
        assert result[F1] == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert abs(result[AUC] - expected_auc) <= 1 / bins
    assert 0.5 < result[AUC] < 1.0


def test_binary_confusion_and_auc_by_hand() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    targets = torch.tensor([0, 1, 1, 0])
    summary, histograms = compute_classification_summary(probs, targets, auc_bins=10)
    assert summary[confusion_key(0, 0)] == 1.0
    assert summary[confusion_key(0, 1)] == 1.0
    assert summary[confusion_key(1, 0)] == 1.0
    assert summary[confusion_key(1, 1)] == 1.0
    assert set(histograms) == {positive_histogram_key(1), negative_histogram_key(1)}
    result = finalize_classification(summary, histograms)
    assert result[ACCURACY] == 0.5
    assert result[SENSITIVITY] == 0.5
    assert result[SPECIFICITY] == 0.5
    assert result[F1] == 0.5
    # positives score 0.8, 0.4; negatives 0.1, 0.7: 3 of 4 pairs ranked correctly.
    assert result[AUC] == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [((0.95, 0.05), 1.0), ((0.05, 0.95), 0.0), ((0.501, 0.502), 0.5)],
)
def test_auc_ties_within_a_bin(scores: tuple[float, float], expected: float) -> None:
    positive, negative = scores
    probs = torch.tensor([[1 - positive, positive], [1 - negative, negative]])
    summary, histograms = compute_classification_summary(probs, torch.tensor([1, 0]), 10)
    assert finalize_classification(summary, histograms)[AUC] == pytest.approx(expected)


def test_undefined_values_are_nan() -> None:
    summary, histograms = compute_classification_summary(
        torch.tensor([[0.8, 0.2]]), torch.tensor([0]), auc_bins=4
    )
    result = finalize_classification(summary, histograms)
    assert result[ACCURACY] == 1.0
    assert math.isnan(result[SENSITIVITY])  # no positives
    assert math.isnan(result[AUC])
    empty = finalize_segmentation(SegmentationMetricAccumulator(2).summary())
    assert all(math.isnan(empty[key]) for key in (DICE, IOU, HD95, ASD))


def test_combine_adds_key_wise() -> None:
    combined = combine([{DICE_SUM: 1.5, DICE_COUNT: 2.0}, {DICE_SUM: 0.5, CASES: 3.0}])
    assert combined == {DICE_SUM: 2.0, DICE_COUNT: 2.0, CASES: 3.0}
    assert combine([]) == {}
    # Values as they may arrive at run time: NumPy scalars are added, a string is refused.
    numpy_scalars: list[dict[str, Any]] = [{CASES: np.int64(2)}, {CASES: np.float32(1.0)}]
    assert combine(numpy_scalars) == {CASES: 3.0}
    not_a_number: list[dict[str, Any]] = [{DICE_SUM: "1"}]
    with pytest.raises(TypeError, match=DICE_SUM):
        combine(not_a_number)
    with pytest.raises(ValueError, match=DICE_SUM):
        combine([{DICE_SUM: float("nan")}])
    with pytest.raises(ValueError, match="bins"):
        combine_histograms([{"h": [1.0, 2.0]}, {"h": [1.0]}])
    with pytest.raises(ValueError, match=IOU_SUM):
        finalize_segmentation({DICE_SUM: 1.0, DICE_COUNT: 1.0})


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda: SegmentationMetricAccumulator(1), ValueError, "num_classes"),
        (lambda: SegmentationMetricAccumulator(2, spacing=0.0), ValueError, "spacing"),
        (lambda: ClassificationMetricAccumulator(2, auc_bins=0), ValueError, "auc_bins"),
        (
            lambda: compute_segmentation_summary(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), 2),
            TypeError,
            "pred_labels",
        ),
        (
            lambda: compute_segmentation_summary(
                torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 2), 2
            ),
            ValueError,
            "target_labels",
        ),
        (
            lambda: compute_segmentation_summary(
                torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long), 2
            ),
            ValueError,
            "shape",
        ),
        (
            lambda: ClassificationMetricAccumulator(3).update(
                torch.rand(2, 2), torch.tensor([0, 1])
            ),
            ValueError,
            "probs",
        ),
        (
            lambda: ClassificationMetricAccumulator(2).update(
                torch.tensor([[0.5, 1.5]]), torch.tensor([0])
            ),
            ValueError,
            "probs",
        ),
        (
            lambda: ClassificationMetricAccumulator(2).update(
                torch.rand(2, 2), torch.tensor([0.0, 1.0])
            ),
            TypeError,
            "targets",
        ),
    ],
)
def test_invalid_inputs_name_the_field(
    call: Callable[[], object], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        call()
