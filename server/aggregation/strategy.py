"""The interface every aggregation strategy implements (`[run.strategy]`, docs/strategies.md).

An `AggregationStrategy` turns one round's site updates (each a full flat model, float32)
into the next global model. There is one class per rule, each in the module of its math:

- `FedAvg` / `FedProx` (`fedavg`) and `FedAdam` / `FedYogi` (`fedopt`) are linear: they
  need only the example-weighted mean of the updates, which `apply_mean` turns into the
  next model. Under central privacy or secure aggregation the server only learns such a
  mean, so those wrappers (`central_aggregation`, `secure_round`) call `apply_mean`;
- `FedMedian` and `FedTrimmedAvg` (`coordinate_wise`) and `Krum` / `MultiKrum` (`krum`)
  need every update and refuse a mean.

`build_strategy` (`factory`) builds the one the settings name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from consortia.common.config.strategy_settings import StrategySettings
from consortia.server.aggregation.robust import TooFewUpdatesError
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
    """One run's aggregation rule, built from `StrategySettings`. Subclasses implement
    `_combine` (and, if linear, `apply_mean`); only the server optimizers keep state."""

    linear: ClassVar[bool] = False

    def __init__(self, settings: StrategySettings) -> None:
        self.settings = settings
        self.name: str = settings.name
        self.optimizer: ServerOptimizer | None = None

    def updates_needed(self) -> int:
        """The fewest updates a round needs for this strategy."""
        return 1

    def apply_mean(self, global_weights: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """The next global weights from the round's weighted mean of the sites' models;
        only linear strategies can (the one thing secure aggregation reveals is the mean)."""
        raise ValueError(
            f'strategy "{self.name}" needs each site\'s update; it cannot work from '
            "their mean alone"
        )

    def mean_details(self) -> dict[str, Any]:
        """What a round aggregated from a mean alone reports (the optimizer's step)."""
        return {}

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
        ordered = sorted(updates, key=lambda update: update.site)
        return self._combine(global_weights, ordered)

    def _combine(
        self, global_weights: np.ndarray, updates: Sequence[SiteUpdate]
    ) -> AggregationResult:
        """The rule itself, on checked updates in site order."""
        raise NotImplementedError(f"{type(self).__name__} does not aggregate")

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
