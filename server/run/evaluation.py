"""Turn the sites' metric sums and counts into metrics: per site and pooled exactly, and
bootstrap confidence intervals for the final model (`consortia.common.metrics.bootstrap`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consortia.common.config.settings import Task
from consortia.common.metrics.bootstrap import (
    LEVEL,
    REPLICATES,
    classification_replicates,
    percentile_interval,
    pooled_ratios,
)
from consortia.common.metrics.exact import (
    DICE,
    IOU,
    combine,
    combine_histograms,
    finalize_classification,
    finalize_segmentation,
)

__all__ = [
    "BOOTSTRAP_METHOD",
    "SiteEvaluation",
    "metric_intervals",
    "pooled_metrics",
    "site_metrics",
]

Summary = tuple[Mapping[str, float], Mapping[str, Sequence[float]]]
Interval = tuple[float, float]
BOOTSTRAP_METHOD = {
    Task.SEGMENTATION: "percentile bootstrap of cases, resampled at each site (stratified)",
    Task.CLASSIFICATION: "percentile bootstrap of each site's confusion counts and score "
    "histograms, at the server (stratified)",
}
# Per-case metrics that segmentation sites resample for intervals.
SEGMENTATION_INTERVAL_METRICS = (DICE, IOU)


@dataclass(frozen=True)
class SiteEvaluation:
    """One site's evaluation reply: sums and counts, histograms (classification) and
    bootstrap replicate sums and counts (segmentation, final model only)."""

    sums: Mapping[str, float]
    histograms: Mapping[str, Sequence[float]] = field(default_factory=dict)
    replicates: Mapping[str, Sequence[float]] = field(default_factory=dict)

    @property
    def summary(self) -> Summary:
        return self.sums, self.histograms


def site_metrics(
    task: Task, sums: Mapping[str, float], histograms: Mapping[str, Sequence[float]]
) -> dict[str, float]:
    """Metrics of one site from its own sums and counts."""
    if task is Task.SEGMENTATION:
        return finalize_segmentation(sums)
    return finalize_classification(sums, histograms)


def pooled_metrics(task: Task, summaries: Sequence[Summary]) -> dict[str, float]:
    """Metrics over all cases of several sites (sums added first: no mean of means)."""
    combined = combine([sums for sums, _ in summaries])
    if task is Task.SEGMENTATION:
        return finalize_segmentation(combined)
    return finalize_classification(combined, combine_histograms([h for _, h in summaries]))


def _intervals(task: Task, group: Sequence[SiteEvaluation]) -> dict[str, Interval | None]:
    """Intervals over the cases of `group` (one site, or several pooled); empty when a
    segmentation site sent no replicates."""
    if task is Task.SEGMENTATION:
        if not group or any(not site.replicates for site in group):
            return {}
        return {
            metric: percentile_interval(pooled_ratios([s.replicates for s in group], metric))
            for metric in SEGMENTATION_INTERVAL_METRICS
        }
    replicates = classification_replicates([site.summary for site in group], REPLICATES)
    return {metric: percentile_interval(values) for metric, values in replicates.items()}


def metric_intervals(
    task: Task,
    sites: Mapping[str, SiteEvaluation],
    groups: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """95% bootstrap intervals per site and for each named group of sites (pooled,
    resampled within each site). A metric's interval is ``[low, high]``, or None where the
    metric is undefined in too many replicates."""

    def jsonable(intervals: Mapping[str, Interval | None]) -> dict[str, list[float] | None]:
        return {key: None if value is None else list(value) for key, value in intervals.items()}

    result: dict[str, Any] = {
        "level": LEVEL,
        "replicates": REPLICATES,
        "method": BOOTSTRAP_METHOD[task],
        "sites": {name: jsonable(_intervals(task, [site])) for name, site in sites.items()},
    }
    for group, names in groups.items():
        members = [sites[name] for name in names if name in sites]
        result[group] = jsonable(_intervals(task, members)) if members else None
    return result
