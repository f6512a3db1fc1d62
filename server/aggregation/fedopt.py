"""FedAdam, FedYogi and FedAvgM: FedAvg's weighted mean applied as a pseudo-gradient by a
server optimizer (the math is `server_optimizer.ServerOptimizer`'s, after Flower's `FedOpt`
and `FedAvgM`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from consortia.common.config.strategy_settings import StrategySettings
from consortia.server.aggregation.fedavg import FedAvg
from consortia.server.aggregation.server_optimizer import OptimizerKind, ServerOptimizer
from consortia.server.aggregation.strategy import (
    DETAIL_SERVER_LEARNING_RATE,
    DETAIL_SERVER_STEP,
    AggregationResult,
    SiteUpdate,
)

__all__ = ["FedAdam", "FedAvgM", "FedOpt", "FedYogi"]


class FedOpt(FedAvg):
    """A linear strategy whose next model is the server optimizer's step towards the mean;
    stateful: the optimizer's moments are part of `state_dict()`."""

    kind: ClassVar[OptimizerKind]

    def __init__(self, settings: StrategySettings) -> None:
        super().__init__(settings)
        momentum = self.kind == "fedavgm"
        self.server_optimizer = ServerOptimizer(
            self.kind,
            learning_rate=settings.server_rate,
            beta_1=settings.server_momentum if momentum else settings.beta_1,
            beta_2=settings.beta_2,
            tau=settings.tau,
        )
        self.optimizer = self.server_optimizer

    def apply_mean(self, global_weights: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """The next global weights: the optimizer's step from the global model towards
        the round's weighted mean."""
        if mean.shape != global_weights.shape:
            raise ValueError(
                f"mean has shape {mean.shape}, the global model {global_weights.shape}"
            )
        return self.server_optimizer.step(global_weights, mean)

    def mean_details(self) -> dict[str, Any]:
        return {DETAIL_SERVER_STEP: self.server_optimizer.steps}

    def _combine(
        self, global_weights: np.ndarray, updates: Sequence[SiteUpdate]
    ) -> AggregationResult:
        result = super()._combine(global_weights, updates)
        optimizer = self.server_optimizer
        result.details[DETAIL_SERVER_LEARNING_RATE] = optimizer.effective_learning_rate(
            optimizer.steps
        )
        return result


class FedAdam(FedOpt):
    """FedAdam (Reddi et al., 2020): Adam moments, Flower's bias correction."""

    kind: ClassVar[OptimizerKind] = "fedadam"


class FedYogi(FedOpt):
    """FedYogi (Reddi et al., 2020): Yogi's second moment, no bias correction."""

    kind: ClassVar[OptimizerKind] = "fedyogi"


class FedAvgM(FedOpt):
    """FedAvgM (Hsu et al., 2019): server momentum over the rounds' moves."""

    kind: ClassVar[OptimizerKind] = "fedavgm"
