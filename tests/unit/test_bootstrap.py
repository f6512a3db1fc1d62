"""Bootstrap intervals from sums, counts and histograms (consortia.common.metrics.bootstrap) and
their use at the server (consortia.server.run.evaluation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from consortia.common.config.settings import Task
from consortia.common.metrics.bootstrap import (
    REPLICATES,
    _histogram_auc,
    case_weights,
    classification_replicates,
    count_key,
    percentile_interval,
    pooled_ratios,
    segmentation_replicates,
    sum_key,
)
from consortia.common.metrics.exact import (
    ClassificationMetricAccumulator,
    SegmentationMetricAccumulator,
    finalize_classification,
)
from consortia.server.run.evaluation import SiteEvaluation, metric_intervals


def test_case_weights_draw_every_case_count_once_per_replicate() -> None:
    weights = case_weights(7, 50, np.random.default_rng(0))
    assert weights.shape == (50, 7)
    assert np.all(weights.sum(axis=1) == 7)
    assert case_weights(0, 3, np.random.default_rng(0)).shape == (3, 0)
    with pytest.raises(ValueError, match="replicates"):
        case_weights(3, 0, np.random.default_rng(0))


def test_segmentation_replicates_are_sums_and_counts_of_resampled_cases() -> None:
    values = np.array([0.2, np.nan, 0.8, 0.5])
    replicates = segmentation_replicates({"dice": values}, 200, np.random.default_rng(1))
    sums, counts = np.array(replicates["dice_sum"]), np.array(replicates["dice_count"])
    assert sums.shape == counts.shape == (200,)
    # counts: resampled cases that define Dice (never the NaN case)
    assert np.all(counts <= 4) and np.all(counts >= 0)
    ratios = sums[counts > 0] / counts[counts > 0]
    assert np.all((ratios >= 0.2 - 1e-12) & (ratios <= 0.8 + 1e-12))
    assert abs(ratios.mean() - 0.5) < 0.05
    with pytest.raises(ValueError, match="one length"):
        segmentation_replicates({"dice": np.zeros(3), "iou": np.zeros(4)})


def test_percentile_interval_covers_the_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2024)
    true_mean = 2.0 / (2.0 + 5.0)
    covered = 0
    trials = 200
    for _ in range(trials):
        values = rng.beta(2.0, 5.0, size=60)
        replicates = segmentation_replicates({"dice": values}, REPLICATES, rng)
        interval = percentile_interval(pooled_ratios([replicates], "dice"))
        assert interval is not None
        covered += interval[0] <= true_mean <= interval[1]
    assert 0.88 <= covered / trials <= 0.99, covered


def test_pooled_ratios_add_sums_before_dividing() -> None:
    site_a = {sum_key("dice"): [1.0, 2.0], count_key("dice"): [2.0, 4.0]}
    site_b = {sum_key("dice"): [3.0, 0.0], count_key("dice"): [2.0, 0.0]}
    np.testing.assert_allclose(pooled_ratios([site_a, site_b], "dice"), [1.0, 0.5])
    empty = {sum_key("dice"): [0.0], count_key("dice"): [0.0]}
    assert np.isnan(pooled_ratios([empty], "dice")[0])
    with pytest.raises(ValueError, match="different numbers of replicates"):
        pooled_ratios([site_a, empty], "dice")


def test_percentile_interval_needs_a_defined_metric() -> None:
    assert percentile_interval([np.nan] * 20 + [0.5] * 80) is None
    low, high = percentile_interval(np.linspace(0.0, 1.0, 1001)) or (None, None)
    assert low == pytest.approx(0.025) and high == pytest.approx(0.975)
    with pytest.raises(ValueError, match="level"):
        percentile_interval([0.5], level=1.0)


def _classification_sample(seed: int, n: int = 200) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    labels = torch.as_tensor(rng.integers(0, 2, size=n))
    scores = np.clip(0.5 + 0.25 * (labels.numpy() - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    probs = torch.as_tensor(np.stack([1 - scores, scores], axis=1), dtype=torch.float32)
    accumulator = ClassificationMetricAccumulator(num_classes=2)
    accumulator.update(probs, labels)
    return accumulator.summary(), accumulator.histograms()


def test_vectorised_auc_equals_the_metric_auc() -> None:
    summary, histograms = _classification_sample(3)
    expected = finalize_classification(summary, histograms)["auc"]
    positive = np.asarray(histograms["auc_pos_hist_c1"])[None, :]
    negative = np.asarray(histograms["auc_neg_hist_c1"])[None, :]
    assert _histogram_auc(positive, negative)[0] == pytest.approx(expected, abs=1e-12)


def test_classification_replicates_centre_on_the_point_estimates() -> None:
    samples = [_classification_sample(4), _classification_sample(5)]
    point = finalize_classification(
        {k: samples[0][0][k] + samples[1][0][k] for k in samples[0][0]},
        {k: list(np.add(samples[0][1][k], samples[1][1][k])) for k in samples[0][1]},
    )
    replicates = classification_replicates(samples, 500, np.random.default_rng(6))
    for metric, values in replicates.items():
        assert values.shape == (500,)
        interval = percentile_interval(values)
        assert interval is not None
        assert interval[0] <= point[metric] <= interval[1], metric
        assert interval[1] - interval[0] < 0.25, metric


def test_accumulator_case_values_match_its_sums() -> None:
    accumulator = SegmentationMetricAccumulator(num_classes=2, surface_distances=False)
    target = torch.zeros(3, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    target[1, 1:3, 1:3] = 1
    pred = target.clone()
    pred[1] = 0  # case 1: lesion missed, Dice 0; case 2: both empty, undefined
    accumulator.update(pred, target)
    values = accumulator.case_values()["dice"]
    assert values[0] == pytest.approx(1.0) and values[1] == 0.0 and np.isnan(values[2])
    summary = accumulator.summary()
    assert summary["dice_sum"] == pytest.approx(np.nansum(values))
    assert summary["dice_count"] == 2


def test_metric_intervals_per_site_and_pooled() -> None:
    rng = np.random.default_rng(7)
    sites = {
        name: SiteEvaluation(
            {},
            {},
            segmentation_replicates(
                {"dice": rng.uniform(0, 1, 40), "iou": rng.uniform(0, 1, 40)}, rng=rng
            ),
        )
        for name in ("a", "b", "held")
    }
    intervals = metric_intervals(
        Task.SEGMENTATION, sites, {"holdout": ["held"], "training_sites": ["a", "b"]}
    )
    assert intervals["level"] == 0.95 and intervals["replicates"] == REPLICATES
    low, high = intervals["training_sites"]["dice"]
    site_low, site_high = intervals["sites"]["a"]["dice"]
    # pooling 80 cases gives a narrower interval than one site's 40
    assert high - low < site_high - site_low
    assert set(intervals["sites"]) == {"a", "b", "held"}
    # a site without replicates (an older node) gets no interval, and no pooled one
    sites["b"] = SiteEvaluation({})
    partial = metric_intervals(Task.SEGMENTATION, sites, {"training_sites": ["a", "b"]})
    assert partial["sites"]["b"] == {} and partial["training_sites"] == {}
