"""Turn the sites' metric sums and counts into metrics: per site and pooled exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from consortia.common.metrics import (
    combine,
    combine_histograms,
    finalize_classification,
    finalize_segmentation,
)
from consortia.common.settings import Task

__all__ = ["pooled_metrics", "site_metrics"]

Summary = tuple[Mapping[str, float], Mapping[str, Sequence[float]]]


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
