"""FedAvg: the example-weighted mean of the sites' flat weight vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["UpdateShapeError", "check_update", "weighted_average"]


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
