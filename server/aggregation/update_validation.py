"""Norm checks on the plain updates of one round, before aggregation (`[validation]`).

A site's update norm is the L2 distance of its weights to the global model it was sent.
An update is rejected when its norm exceeds `max_update_norm` (0: no bound), or when it
exceeds `outlier_factor` times the median of the OTHER sites' norms in the round (0: off;
only with at least `MIN_UPDATES_FOR_OUTLIERS` updates, since a median of one other site
says nothing about the crowd). The per-update checks (keys, shape, dtype, finite values,
example count) are `consortia.server.exchange.updates.accept_update`'s; this module only looks at
norms of updates that passed them.

Norms only see scaling: a sign-flipped update has the norm of the honest one and passes.
Catching that is the robust strategies' job (median, trimmed mean, Krum).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

import numpy as np

from consortia.common.config.strategy_settings import ValidationSettings
from consortia.server.aggregation.fedavg import UpdateShapeError

__all__ = [
    "MIN_UPDATES_FOR_OUTLIERS",
    "UPDATE_NORM",
    "UpdateValidator",
    "update_norm",
    "update_norms",
]

# results.json: rounds[k].train[site].update_norm (the norm the checks saw).
UPDATE_NORM: Final = "update_norm"
# The outlier check needs this many updates in the round (the site and at least two others).
MIN_UPDATES_FOR_OUTLIERS: Final = 3
# Values per float64 chunk: bounds the extra memory of a norm to 8 MiB whatever the model.
_CHUNK: Final = 1 << 20


def update_norm(global_weights: np.ndarray, weights: np.ndarray) -> float:
    """The L2 norm of `weights - global_weights`, accumulated in float64 chunk by chunk
    (never a full float64 copy of either vector)."""
    if weights.shape != global_weights.shape or weights.ndim != 1:
        raise UpdateShapeError(
            f"has shape {weights.shape}, the global model {global_weights.shape}"
        )
    total = 0.0
    diff = np.empty(min(_CHUNK, weights.size), dtype=np.float64)
    for start in range(0, weights.size, _CHUNK):
        part = diff[: min(_CHUNK, weights.size - start)]
        np.subtract(
            weights[start : start + part.size],
            global_weights[start : start + part.size],
            out=part,
            dtype=np.float64,
        )
        total += float(np.dot(part, part))
    return math.sqrt(total)


def update_norms(
    global_weights: np.ndarray, candidates: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Each site's update norm (see `update_norm`), by site name."""
    return {name: update_norm(global_weights, weights) for name, weights in candidates.items()}


def _number(value: float) -> str:
    return f"{value:.4g}"


class UpdateValidator:
    """Applies `ValidationSettings` to the update norms of one round. Stateless: every
    round is judged on its own updates."""

    def __init__(self, settings: ValidationSettings) -> None:
        self.settings = settings

    def check_norms(
        self, global_weights: np.ndarray, candidates: Mapping[str, np.ndarray]
    ) -> dict[str, str]:
        """Site name -> why its update is rejected, for the updates of `candidates`
        (site name -> flat weights, all of the global model's shape) that fail a norm
        check; sites that pass are absent."""
        return self.rejections(update_norms(global_weights, candidates))

    def rejections(self, norms: Mapping[str, float]) -> dict[str, str]:
        """The same as `check_norms`, from norms already computed (`update_norms`), so a
        caller that records the norms computes them once. A non-finite norm is rejected
        and left out of the other sites' median."""
        if any(norm < 0 for norm in norms.values()):
            raise ValueError(f"update norms must be >= 0, got {dict(norms)}")
        finite = {name: norm for name, norm in norms.items() if math.isfinite(norm)}
        bound = self.settings.max_update_norm
        factor = self.settings.outlier_factor
        outliers = factor > 0 and len(finite) >= MIN_UPDATES_FOR_OUTLIERS
        result: dict[str, str] = {}
        for name, norm in norms.items():
            if name not in finite:
                result[name] = f"update norm {norm} is not a finite number"
                continue
            reasons = []
            if bound > 0 and norm > bound:
                reasons.append(f"update norm {_number(norm)} exceeds max_update_norm {bound:g}")
            if outliers:
                median = float(np.median([n for other, n in finite.items() if other != name]))
                if norm > factor * median:
                    reasons.append(_outlier_reason(norm, median, factor))
            if reasons:
                result[name] = "; ".join(reasons)
        return result


def _outlier_reason(norm: float, median: float, factor: float) -> str:
    if median > 0:
        return (
            f"update norm {_number(norm)} is {_number(norm / median)}x the median of the "
            f"other sites' norms ({_number(median)}); outlier_factor {factor:g}"
        )
    return (
        f"update norm {_number(norm)} while the median of the other sites' norms is 0 "
        f"(they left the model unchanged); outlier_factor {factor:g}"
    )
