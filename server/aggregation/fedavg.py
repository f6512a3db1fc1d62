"""FedAvg (and FedProx, FedAvg at the server): the example-weighted mean of the sites'
flat weight vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from consortia.server.aggregation.strategy import (
    AggregationResult,
    AggregationStrategy,
    SiteUpdate,
)

__all__ = ["FedAvg", "FedProx", "UpdateShapeError", "check_update", "weighted_average"]


class UpdateShapeError(ValueError):
    """An update does not fit the global model (size, dtype, non-finite values)."""


def check_update(reference: np.ndarray, update: np.ndarray) -> None:
    """Raise `UpdateShapeError` with the reason when `update` cannot be aggregated."""
    if update.ndim != 1 or update.shape != reference.shape:
        raise UpdateShapeError(f"has shape {update.shape}, the global model {reference.shape}")
    if update.dtype != reference.dtype:
        raise UpdateShapeError(f"has dtype {update.dtype}, the global model {reference.dtype}")
    if not np.all(np.isfinite(update)):
        raise UpdateShapeError("holds NaN or infinite values")


def weighted_average(updates: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """Mean of the vectors weighted by their example counts (float64 accumulation)."""
    if not updates:
        raise ValueError("no updates to aggregate")
    total = float(sum(weight for _, weight in updates))
    if total <= 0:
        raise ValueError("the updates' example counts sum to zero")
    acc = np.zeros(updates[0][0].shape, dtype=np.float64)
    for vector, count in updates:
        acc += vector.astype(np.float64) * (count / total)
    return acc.astype(updates[0][0].dtype)


class FedAvg(AggregationStrategy):
    """FedAvg: the next global model is the example-weighted mean of the sites' models."""

    linear: ClassVar[bool] = True

    def apply_mean(self, global_weights: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """The next global weights from the round's weighted mean: the mean itself."""
        if mean.shape != global_weights.shape:
            raise ValueError(
                f"mean has shape {mean.shape}, the global model {global_weights.shape}"
            )
        return mean.astype(global_weights.dtype, copy=False)

    def _combine(
        self, global_weights: np.ndarray, updates: Sequence[SiteUpdate]
    ) -> AggregationResult:
        mean = weighted_average([(u.weights, u.examples) for u in updates])
        new = self.apply_mean(global_weights, mean)
        sites = [update.site for update in updates]
        details = self.mean_details()
        return AggregationResult(new.astype(global_weights.dtype, copy=False), sites, details)


class FedProx(FedAvg):
    """FedProx: FedAvg at the server; the sites add the proximal term
    `proximal_mu / 2 * ||w - w_global||^2` to their loss (the train instruction's `proximal_mu`)."""
