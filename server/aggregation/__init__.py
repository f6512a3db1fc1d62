"""How the server combines the sites' updates: strategies, one class each, and the wrappers
(central DP) that extend them.

The modules, one concept each:

- ``central_privacy``: Optional client-level (central) differential privacy at the server, done
  by Flower.
- ``fedavg``: FedAvg: the example-weighted mean of the sites' flat weight vectors.
- ``robust``: Robust aggregation math on flat weight vectors: coordinate median, trimmed mean,
  Krum.
- ``server_optimizer``: FedAdam / FedYogi: a server optimizer that applies the round's mean as a
  pseudo-gradient.
- ``strategy``: The run's aggregation strategy (`[run.strategy]`, docs/strategies.md).
- ``update_validation``: Norm checks on the plain updates of one round, before aggregation
  (`[validation]`).
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.aggregation.central_privacy import (
        ACCOUNTANT_NAME as ACCOUNTANT_NAME,
    )
    from consortia.server.aggregation.central_privacy import (
        CentralPrivacy as CentralPrivacy,
    )
    from consortia.server.aggregation.fedavg import (
        UpdateShapeError as UpdateShapeError,
    )
    from consortia.server.aggregation.fedavg import (
        check_update as check_update,
    )
    from consortia.server.aggregation.fedavg import (
        weighted_average as weighted_average,
    )
    from consortia.server.aggregation.robust import (
        TooFewUpdatesError as TooFewUpdatesError,
    )
    from consortia.server.aggregation.robust import (
        coordinate_median as coordinate_median,
    )
    from consortia.server.aggregation.robust import (
        krum_scores as krum_scores,
    )
    from consortia.server.aggregation.robust import (
        krum_select as krum_select,
    )
    from consortia.server.aggregation.robust import (
        krum_updates_needed as krum_updates_needed,
    )
    from consortia.server.aggregation.robust import (
        trimmed_count as trimmed_count,
    )
    from consortia.server.aggregation.robust import (
        trimmed_mean as trimmed_mean,
    )
    from consortia.server.aggregation.server_optimizer import (
        OPTIMIZER_KINDS as OPTIMIZER_KINDS,
    )
    from consortia.server.aggregation.server_optimizer import (
        OptimizerKind as OptimizerKind,
    )
    from consortia.server.aggregation.server_optimizer import (
        ServerOptimizer as ServerOptimizer,
    )
    from consortia.server.aggregation.server_optimizer import (
        StrategyStateError as StrategyStateError,
    )
    from consortia.server.aggregation.strategy import (
        DETAIL_BYZANTINE_SITES as DETAIL_BYZANTINE_SITES,
    )
    from consortia.server.aggregation.strategy import (
        DETAIL_KRUM_SCORES as DETAIL_KRUM_SCORES,
    )
    from consortia.server.aggregation.strategy import (
        DETAIL_SERVER_LEARNING_RATE as DETAIL_SERVER_LEARNING_RATE,
    )
    from consortia.server.aggregation.strategy import (
        DETAIL_SERVER_STEP as DETAIL_SERVER_STEP,
    )
    from consortia.server.aggregation.strategy import (
        DETAIL_TRIMMED_PER_END as DETAIL_TRIMMED_PER_END,
    )
    from consortia.server.aggregation.strategy import (
        AggregationResult as AggregationResult,
    )
    from consortia.server.aggregation.strategy import (
        AggregationStrategy as AggregationStrategy,
    )
    from consortia.server.aggregation.strategy import (
        SiteUpdate as SiteUpdate,
    )
    from consortia.server.aggregation.strategy import (
        build_strategy as build_strategy,
    )
    from consortia.server.aggregation.update_validation import (
        MIN_UPDATES_FOR_OUTLIERS as MIN_UPDATES_FOR_OUTLIERS,
    )
    from consortia.server.aggregation.update_validation import (
        UPDATE_NORM as UPDATE_NORM,
    )
    from consortia.server.aggregation.update_validation import (
        UpdateValidator as UpdateValidator,
    )
    from consortia.server.aggregation.update_validation import (
        update_norm as update_norm,
    )
    from consortia.server.aggregation.update_validation import (
        update_norms as update_norms,
    )

__all__ = [
    "ACCOUNTANT_NAME",
    "DETAIL_BYZANTINE_SITES",
    "DETAIL_KRUM_SCORES",
    "DETAIL_SERVER_LEARNING_RATE",
    "DETAIL_SERVER_STEP",
    "DETAIL_TRIMMED_PER_END",
    "MIN_UPDATES_FOR_OUTLIERS",
    "OPTIMIZER_KINDS",
    "UPDATE_NORM",
    "AggregationResult",
    "AggregationStrategy",
    "CentralPrivacy",
    "OptimizerKind",
    "ServerOptimizer",
    "SiteUpdate",
    "StrategyStateError",
    "TooFewUpdatesError",
    "UpdateShapeError",
    "UpdateValidator",
    "build_strategy",
    "check_update",
    "coordinate_median",
    "krum_scores",
    "krum_select",
    "krum_updates_needed",
    "trimmed_count",
    "trimmed_mean",
    "update_norm",
    "update_norms",
    "weighted_average",
]

_EXPORTS = {
    "ACCOUNTANT_NAME": "central_privacy",
    "AggregationResult": "strategy",
    "AggregationStrategy": "strategy",
    "CentralPrivacy": "central_privacy",
    "DETAIL_BYZANTINE_SITES": "strategy",
    "DETAIL_KRUM_SCORES": "strategy",
    "DETAIL_SERVER_LEARNING_RATE": "strategy",
    "DETAIL_SERVER_STEP": "strategy",
    "DETAIL_TRIMMED_PER_END": "strategy",
    "MIN_UPDATES_FOR_OUTLIERS": "update_validation",
    "OPTIMIZER_KINDS": "server_optimizer",
    "OptimizerKind": "server_optimizer",
    "ServerOptimizer": "server_optimizer",
    "SiteUpdate": "strategy",
    "StrategyStateError": "server_optimizer",
    "TooFewUpdatesError": "robust",
    "UPDATE_NORM": "update_validation",
    "UpdateShapeError": "fedavg",
    "UpdateValidator": "update_validation",
    "build_strategy": "strategy",
    "check_update": "fedavg",
    "coordinate_median": "robust",
    "krum_scores": "robust",
    "krum_select": "robust",
    "krum_updates_needed": "robust",
    "trimmed_count": "robust",
    "trimmed_mean": "robust",
    "update_norm": "update_validation",
    "update_norms": "update_validation",
    "weighted_average": "fedavg",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
