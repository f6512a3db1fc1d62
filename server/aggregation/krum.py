"""Krum and MultiKrum: keep the updates closest to their neighbours, like Flower's
(the math is `robust.krum_scores` / `robust.krum_select`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from consortia.server.aggregation.fedavg import weighted_average
from consortia.server.aggregation.robust import krum_scores, krum_select, krum_updates_needed
from consortia.server.aggregation.strategy import (
    DETAIL_BYZANTINE_SITES,
    DETAIL_KRUM_SCORES,
    AggregationResult,
    AggregationStrategy,
    SiteUpdate,
)

__all__ = ["Krum", "MultiKrum"]

logger = logging.getLogger("consortia.server")


class Krum(AggregationStrategy):
    """Krum: the one update with the lowest Krum score becomes the next model."""

    def updates_needed(self) -> int:
        """Krum needs 2f + 3 updates (f = `byzantine_sites`)."""
        return krum_updates_needed(self.settings.byzantine_sites)

    def _keep(self, count: int) -> int:
        """How many of `count` updates the rule keeps."""
        return 1

    def _combine(
        self, global_weights: np.ndarray, updates: Sequence[SiteUpdate]
    ) -> AggregationResult:
        byzantine = self.settings.byzantine_sites
        vectors = [update.weights for update in updates]
        scores = krum_scores(vectors, byzantine)
        chosen = krum_select(vectors, byzantine, self._keep(len(updates)), scores=scores)
        kept = [updates[i] for i in chosen]
        dtype = global_weights.dtype
        if len(kept) == 1:
            new = kept[0].weights.astype(dtype, copy=True)
        else:
            new = weighted_average([(u.weights, u.examples) for u in kept]).astype(dtype)
        details = {
            DETAIL_KRUM_SCORES: {u.site: float(s) for u, s in zip(updates, scores, strict=True)},
            DETAIL_BYZANTINE_SITES: byzantine,
        }
        return AggregationResult(new, sorted(u.site for u in kept), details)


class MultiKrum(Krum):
    """MultiKrum: the example-weighted mean of the `multi_krum_keep` lowest-scoring updates
    (all but `byzantine_sites` when 0)."""

    def _keep(self, count: int) -> int:
        most = count - self.settings.byzantine_sites
        wanted = self.settings.multi_krum_keep
        keep = min(wanted or most, most)
        if wanted > most:
            logger.warning(
                "multi_krum: keeping %d of %d updates (at most n - byzantine_sites), "
                "not multi_krum_keep=%d",
                keep,
                count,
                wanted,
            )
        return keep
