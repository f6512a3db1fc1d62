"""The coordinate-wise robust strategies: FedMedian and FedTrimmedAvg, unweighted like
Flower's (the math is `robust.coordinate_median` / `robust.trimmed_mean`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from consortia.server.aggregation.robust import coordinate_median, trimmed_count, trimmed_mean
from consortia.server.aggregation.strategy import (
    DETAIL_TRIMMED_PER_END,
    AggregationResult,
    AggregationStrategy,
    SiteUpdate,
)

__all__ = ["FedMedian", "FedTrimmedAvg"]

logger = logging.getLogger("consortia.server")


class FedMedian(AggregationStrategy):
    """The coordinate-wise median of the sites' models."""

    def _combine(
        self, global_weights: np.ndarray, updates: Sequence[SiteUpdate]
    ) -> AggregationResult:
        median = coordinate_median([update.weights for update in updates])
        return AggregationResult(median.astype(global_weights.dtype), [u.site for u in updates])


class FedTrimmedAvg(AggregationStrategy):
    """The coordinate-wise mean after cutting `trim_fraction` of the values at each end."""

    def _combine(
        self, global_weights: np.ndarray, updates: Sequence[SiteUpdate]
    ) -> AggregationResult:
        vectors = [update.weights for update in updates]
        fraction = self.settings.trim_fraction
        cut = trimmed_count(len(vectors), fraction)
        if cut == 0:
            logger.warning(
                "trimmed_mean: trim_fraction=%g cuts nothing from %d updates (a plain mean)",
                fraction,
                len(vectors),
            )
        new = trimmed_mean(vectors, fraction).astype(global_weights.dtype)
        return AggregationResult(new, [u.site for u in updates], {DETAIL_TRIMMED_PER_END: cut})
