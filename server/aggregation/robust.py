"""Robust aggregation math on flat weight vectors: coordinate median, trimmed mean, Krum.

Pure numpy, no state. Every function takes the sites' flat float vectors (one per site,
all the same shape) and never builds an n x n x d tensor: coordinate-wise rules work on
column chunks of at most `_CHUNK_VALUES` values (so the extra memory stays bounded for
models of millions of weights), and Krum's pairwise distances come from a float64 Gram
matrix accumulated over the same chunks.

Flower's own helpers do the per-coordinate math (`aggregate_median` of the legacy
strategy helpers, `trim_mean` of the Message-API `FedTrimmedAvg`); Krum's scoring rule is
Flower's `select_multikrum` (each vector's score is the sum of the squared distances to
its n - f - 2 nearest other vectors), computed here on flat vectors because Flower's
version takes `RecordDict`s and forms the distances in float32 from ||x||^2 + ||y||^2 -
2 x.y, which cancels badly for models that are close to each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from flwr.server.strategy.aggregate import aggregate_median
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from consortia.common.errors import ConsortiaError

__all__ = [
    "TooFewUpdatesError",
    "coordinate_median",
    "krum_scores",
    "krum_select",
    "krum_updates_needed",
    "trimmed_count",
    "trimmed_mean",
]

# Values (n sites x columns) per chunk of the coordinate-wise rules: 32 MiB in float64.
_CHUNK_VALUES = 1 << 22


class TooFewUpdatesError(ConsortiaError):
    """A round has fewer updates than the aggregation rule needs; the message says how many."""


def _stacked_chunks(
    vectors: Sequence[np.ndarray], rule: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Apply `rule` (n x c float64 -> c values) to column chunks; float32 like the inputs."""
    if not vectors:
        raise TooFewUpdatesError("no updates to aggregate")
    size = vectors[0].shape[0]
    for vector in vectors:
        if vector.ndim != 1 or vector.shape[0] != size:
            raise ValueError(f"vectors must be flat and of one size {size}, got {vector.shape}")
    out = np.empty(size, dtype=vectors[0].dtype)
    step = max(1, _CHUNK_VALUES // len(vectors))
    for start in range(0, size, step):
        stop = min(size, start + step)
        chunk = np.stack([v[start:stop] for v in vectors]).astype(np.float64, copy=False)
        out[start:stop] = rule(chunk)
    return out


def coordinate_median(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The coordinate-wise median of the vectors (unweighted, like Flower's FedMedian)."""

    def median(chunk: np.ndarray) -> np.ndarray:
        return aggregate_median([([row], 1) for row in chunk])[0]

    return _stacked_chunks(vectors, median)


def trimmed_count(updates: int, trim_fraction: float) -> int:
    """How many values `trimmed_mean` cuts at each end of every coordinate (Flower's rule:
    `int(trim_fraction * n)`)."""
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    return int(trim_fraction * updates)


def trimmed_mean(vectors: Sequence[np.ndarray], trim_fraction: float) -> np.ndarray:
    """The coordinate-wise mean after cutting `trimmed_count(n, trim_fraction)` of the
    smallest and of the largest values of every coordinate (unweighted, like Flower's
    FedTrimmedAvg)."""
    if not vectors:
        raise TooFewUpdatesError("no updates to aggregate")
    cut = trimmed_count(len(vectors), trim_fraction)
    if len(vectors) - 2 * cut < 1:  # cannot happen for trim_fraction < 0.5; kept as a guard
        raise TooFewUpdatesError(
            f"trimmed_mean with trim_fraction={trim_fraction} keeps no value of "
            f"{len(vectors)} update(s)"
        )

    def mean(chunk: np.ndarray) -> np.ndarray:
        return trim_mean(chunk, trim_fraction)

    return _stacked_chunks(vectors, mean)


def krum_updates_needed(byzantine: int) -> int:
    """The fewest updates Krum's guarantee holds for with `byzantine` bad ones: 2f + 3."""
    if byzantine < 0:
        raise ValueError(f"byzantine must be >= 0, got {byzantine}")
    return 2 * byzantine + 3


def _squared_distances(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The n x n matrix of squared L2 distances, from a float64 Gram matrix of the vectors
    centred (per chunk) on their mean, which keeps the cancellation small."""
    n = len(vectors)
    size = vectors[0].shape[0]
    gram = np.zeros((n, n), dtype=np.float64)
    step = max(1, _CHUNK_VALUES // n)
    for start in range(0, size, step):
        chunk = np.stack([v[start : start + step] for v in vectors]).astype(np.float64)
        chunk -= chunk.mean(axis=0)
        gram += chunk @ chunk.T
    norms = np.diag(gram)
    distances = norms[:, None] + norms[None, :] - 2.0 * gram
    np.maximum(distances, 0.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    return distances


def krum_scores(vectors: Sequence[np.ndarray], byzantine: int) -> np.ndarray:
    """Each vector's Krum score: the sum of its squared distances to its n - f - 2 nearest
    other vectors (lower is better). Needs n >= 2f + 3 vectors."""
    needed = krum_updates_needed(byzantine)
    if len(vectors) < needed:
        raise TooFewUpdatesError(
            f"Krum with byzantine_sites={byzantine} needs at least {needed} updates "
            f"(2 * byzantine_sites + 3), got {len(vectors)}"
        )
    size = vectors[0].shape[0]
    for vector in vectors:
        if vector.ndim != 1 or vector.shape[0] != size:
            raise ValueError(f"vectors must be flat and of one size {size}, got {vector.shape}")
    distances = _squared_distances(vectors)
    np.fill_diagonal(distances, np.inf)  # a vector is not its own neighbour
    nearest = len(vectors) - byzantine - 2
    closest = np.sort(distances, axis=1)[:, :nearest]
    scores: np.ndarray = closest.sum(axis=1)
    return scores


def krum_select(
    vectors: Sequence[np.ndarray],
    byzantine: int,
    keep: int,
    scores: np.ndarray | None = None,
) -> list[int]:
    """Indices of the `keep` vectors with the lowest Krum scores, best first (Krum: keep=1;
    Multi-Krum: keep=m, at most n - f). Ties go to the lower index. Pass `scores` from
    `krum_scores` to avoid computing the distances twice."""
    if scores is None:
        scores = krum_scores(vectors, byzantine)
    elif scores.shape != (len(vectors),):
        raise ValueError(f"scores has shape {scores.shape}, expected ({len(vectors)},)")
    most = len(vectors) - byzantine
    if not 1 <= keep <= most:
        raise ValueError(
            f"keep must be between 1 and n - byzantine = {most} for {len(vectors)} updates, "
            f"got {keep}"
        )
    order = np.argsort(scores, kind="stable")[:keep]
    return [int(index) for index in order]
