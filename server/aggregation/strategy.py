"""The run's aggregation strategy (`[run.strategy]`, docs/strategies.md).

`AggregationStrategy` turns one round's site updates (each a full flat model, float32)
into the next global model:

- linear strategies (fedavg, fedprox, fedadam, fedyogi) take the example-weighted mean
  and pass it to `apply_mean`, which runs the server optimizer for fedadam / fedyogi.
  Under secure aggregation the server only learns that mean, so the round loop calls
  `apply_mean` itself;
- median and trimmed_mean are coordinate-wise and unweighted, like Flower's FedMedian
  and FedTrimmedAvg;
- krum keeps the one update with the lowest Krum score; multi_krum averages the
  `multi_krum_keep` lowest-scoring ones weighted by examples, like Flower's MultiKrum.

The math lives in `server.aggregation`, `server.robust_aggregation` and
`server.server_optimizer`; this module only picks and records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consortia.common.config.strategy_settings import StrategySettings
from consortia.server.aggregation.fedavg import weighted_average
from consortia.server.aggregation.robust import (
    TooFewUpdatesError,
    coordinate_median,
    krum_scores,
    krum_select,
    krum_updates_needed,
    trimmed_count,
    trimmed_mean,
)
from consortia.server.aggregation.server_optimizer import ServerOptimizer, StrategyStateError

__all__ = [
    "DETAIL_BYZANTINE_SITES",
    "DETAIL_KRUM_SCORES",
    "DETAIL_SERVER_LEARNING_RATE",
    "DETAIL_SERVER_STEP",
    "DETAIL_TRIMMED_PER_END",
    "AggregationResult",
    "AggregationStrategy",
    "SiteUpdate",
    "StrategyStateError",
    "TooFewUpdatesError",
    "build_strategy",
]

logger = logging.getLogger("consortia.server")

# Keys of `AggregationStrategy.state_dict()` (besides the optimizer's own).
_NAME = "name"
# Keys of `AggregationResult.details` (they go into results.json).
DETAIL_KRUM_SCORES = "krum_scores"
DETAIL_BYZANTINE_SITES = "byzantine_sites"
DETAIL_TRIMMED_PER_END = "trimmed_per_end"
DETAIL_SERVER_STEP = "server_optimizer_step"
DETAIL_SERVER_LEARNING_RATE = "server_learning_rate"


@dataclass(frozen=True)
class SiteUpdate:
    """One site's update: its full new model as a flat vector and its example count."""

    site: str
    weights: np.ndarray
    examples: float


@dataclass(frozen=True)
class AggregationResult:
    """The next global weights (float32), the sites whose updates they use, and what the
    strategy measured on the way (JSON-ready, for results.json)."""

    weights: np.ndarray
    kept: list[str]
    details: dict[str, Any] = field(default_factory=dict)


class AggregationStrategy:
    """One run's aggregation rule, built from `StrategySettings`; stateful only for
    fedadam / fedyogi (the server optimizer's moments)."""

    def __init__(self, settings: StrategySettings) -> None:
        self.settings = settings
        self.name: str = settings.name
        self.linear: bool = settings.linear
        self.optimizer: ServerOptimizer | None = None
        if settings.name == "fedadam" or settings.name == "fedyogi":
            self.optimizer = ServerOptimizer(
                settings.name,
                learning_rate=settings.server_learning_rate,
                beta_1=settings.beta_1,
                beta_2=settings.beta_2,
                tau=settings.tau,
            )

    def updates_needed(self) -> int:
        """The fewest updates a round needs for this strategy (Krum: 2f + 3)."""
        if self.name in ("krum", "multi_krum"):
            return krum_updates_needed(self.settings.byzantine_sites)
        return 1

    def apply_mean(self, global_weights: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """The next global weights from the round's weighted mean of the sites' models:
        the server optimizer's step for fedadam / fedyogi, otherwise the mean itself.
        Only for linear strategies (the one thing secure aggregation reveals is the mean)."""
        if not self.linear:
            raise ValueError(
                f'strategy "{self.name}" needs each site\'s update; it cannot work from '
                "their mean alone"
            )
        if mean.shape != global_weights.shape:
            raise ValueError(
                f"mean has shape {mean.shape}, the global model {global_weights.shape}"
            )
        if self.optimizer is None:
            return mean.astype(global_weights.dtype, copy=False)
        return self.optimizer.step(global_weights, mean)

    def _check(self, global_weights: np.ndarray, updates: Sequence[SiteUpdate]) -> None:
        if not updates:
            raise TooFewUpdatesError(f'strategy "{self.name}": no updates to aggregate')
        names = [update.site for update in updates]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate site updates: {sorted(names)}")
        for update in updates:
            if update.weights.shape != global_weights.shape:
                raise ValueError(
                    f"update of {update.site} has shape {update.weights.shape}, "
                    f"the global model {global_weights.shape}"
                )
        needed = self.updates_needed()
        if len(updates) < needed:
            raise TooFewUpdatesError(
                f'strategy "{self.name}" with byzantine_sites={self.settings.byzantine_sites} '
                f"needs at least {needed} updates (2 * byzantine_sites + 3), got {len(updates)}"
            )

    def aggregate(
        self, global_weights: np.ndarray, updates: Sequence[SiteUpdate]
    ) -> AggregationResult:
        """The next global model from this round's updates (the full models the sites
        sent back). Raises `TooFewUpdatesError` when the round has too few for the rule."""
        self._check(global_weights, updates)
        # In site order, not arrival order: floating-point sums then come out the same
        # bits in every run, so a resumed run can reproduce an uninterrupted one exactly.
        updates = sorted(updates, key=lambda update: update.site)
        dtype = global_weights.dtype
        sites = [update.site for update in updates]
        vectors = [update.weights for update in updates]
        if self.linear:
            mean = weighted_average([(u.weights, u.examples) for u in updates])
            new = self.apply_mean(global_weights, mean)
            details: dict[str, Any] = {}
            if self.optimizer is not None:
                details[DETAIL_SERVER_STEP] = self.optimizer.steps
                details[DETAIL_SERVER_LEARNING_RATE] = self.optimizer.effective_learning_rate(
                    self.optimizer.steps
                )
            return AggregationResult(new.astype(dtype, copy=False), sites, details)
        if self.name == "median":
            return AggregationResult(coordinate_median(vectors).astype(dtype), sites)
        if self.name == "trimmed_mean":
            fraction = self.settings.trim_fraction
            cut = trimmed_count(len(vectors), fraction)
            if cut == 0:
                logger.warning(
                    "trimmed_mean: trim_fraction=%g cuts nothing from %d updates (a plain mean)",
                    fraction,
                    len(vectors),
                )
            new = trimmed_mean(vectors, fraction).astype(dtype)
            return AggregationResult(new, sites, {DETAIL_TRIMMED_PER_END: cut})
        return self._krum(updates, dtype)

    def _krum(self, updates: Sequence[SiteUpdate], dtype: np.dtype[Any]) -> AggregationResult:
        byzantine = self.settings.byzantine_sites
        vectors = [update.weights for update in updates]
        scores = krum_scores(vectors, byzantine)
        keep = 1
        if self.name == "multi_krum":
            most = len(updates) - byzantine
            keep = min(self.settings.multi_krum_keep or most, most)
            if self.settings.multi_krum_keep > most:
                logger.warning(
                    "multi_krum: keeping %d of %d updates (at most n - byzantine_sites), "
                    "not multi_krum_keep=%d",
                    keep,
                    len(updates),
                    self.settings.multi_krum_keep,
                )
        chosen = krum_select(vectors, byzantine, keep, scores=scores)
        kept = [updates[i] for i in chosen]
        if len(kept) == 1:
            new = kept[0].weights.astype(dtype, copy=True)
        else:
            new = weighted_average([(u.weights, u.examples) for u in kept]).astype(dtype)
        details = {
            DETAIL_KRUM_SCORES: {u.site: float(s) for u, s in zip(updates, scores, strict=True)},
            DETAIL_BYZANTINE_SITES: byzantine,
        }
        return AggregationResult(new, sorted(u.site for u in kept), details)

    def state_dict(self) -> dict[str, Any]:
        """The strategy's name and, for fedadam / fedyogi, the optimizer's state (a flat
        mapping: float32 arrays for the moments, str / int / float otherwise)."""
        state: dict[str, Any] = {_NAME: self.name}
        if self.optimizer is not None:
            state.update(self.optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any], vector_size: int | None = None) -> None:
        """Resume from `state_dict()`; refuses a state saved by another strategy or with
        other settings, and validates the optimizer's moments (`vector_size`: the model's)."""
        saved = state.get(_NAME)
        if saved != self.name:
            raise StrategyStateError(
                f"strategy state: {_NAME} is {saved!r}, this run uses {self.name!r}"
            )
        rest = {key: value for key, value in state.items() if key != _NAME}
        if self.optimizer is None:
            if rest:
                raise StrategyStateError(
                    f"strategy state: unknown {', '.join(sorted(rest))} for stateless "
                    f'strategy "{self.name}"'
                )
            return
        self.optimizer.load_state_dict(rest, vector_size=vector_size)


def build_strategy(settings: StrategySettings) -> AggregationStrategy:
    """The aggregation strategy that `[run.strategy]` describes."""
    return AggregationStrategy(settings)
