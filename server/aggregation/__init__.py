"""How the server combines the sites' updates: strategies, one class each, and the wrappers
(central DP) that extend them.

The modules, one concept each:

- ``aggregation``: How a round's checked updates become the next global model: the interface the
  round loop calls, and plain aggregation, its simplest form.
- ``central_aggregation``: Central (client-level) differential privacy as a wrapper around the
  run's strategy.
- ``central_privacy``: Optional client-level (central) differential privacy at the server, done
  by Flower.
- ``coordinate_wise``: The coordinate-wise robust strategies: FedMedian and FedTrimmedAvg,
  unweighted like Flower's (the math is `robust.coordinate_median` / `robust.trimmed_mean`).
- ``factory``: Building a run's aggregation once: the strategy `[run.strategy]` names (one class
  per name), and the `Aggregation` around it (plain, central DP or secure aggregation).
- ``fedavg``: FedAvg (and FedProx, FedAvg at the server): the example-weighted mean of the
  sites' flat weight vectors.
- ``fedopt``: FedAdam, FedYogi and FedAvgM: FedAvg's weighted mean applied as a pseudo-gradient
  by a server optimizer (the math is `server_optimizer.ServerOptimizer`'s, after Flower's
  `FedOpt` and `FedAvgM`).
- ``krum``: Krum and MultiKrum: keep the updates closest to their neighbours, like Flower's (the
  math is `robust.krum_scores` / `robust.krum_select`).
- ``robust``: Robust aggregation math on flat weight vectors: coordinate median, trimmed mean,
  Krum.
- ``server_optimizer``: FedAdam / FedYogi / FedAvgM: a server optimizer that applies the round's
  mean as a pseudo-gradient.
- ``strategy``: The interface every aggregation strategy implements (`[run.strategy]`,
  docs/strategies.md).
- ``update_validation``: Norm checks on the plain updates of one round, before aggregation
  (`[validation]`).
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.aggregation.aggregation import (
        NO_USABLE_UPDATE as NO_USABLE_UPDATE,
    )
    from consortia.server.aggregation.aggregation import (
        RECORD_SECURE_AGGREGATION as RECORD_SECURE_AGGREGATION,
    )
    from consortia.server.aggregation.aggregation import (
        REPORT_KEPT as REPORT_KEPT,
    )
    from consortia.server.aggregation.aggregation import (
        Aggregation as Aggregation,
    )
    from consortia.server.aggregation.aggregation import (
        RoundOutcome as RoundOutcome,
    )
    from consortia.server.aggregation.aggregation import (
        RoundPlan as RoundPlan,
    )
    from consortia.server.aggregation.aggregation import (
        require_linear as require_linear,
    )
    from consortia.server.aggregation.central_aggregation import (
        RECORD_CENTRAL_PRIVACY as RECORD_CENTRAL_PRIVACY,
    )
    from consortia.server.aggregation.central_aggregation import (
        CentralPrivacyAggregation as CentralPrivacyAggregation,
    )
    from consortia.server.aggregation.central_privacy import (
        ACCOUNTANT_NAME as ACCOUNTANT_NAME,
    )
    from consortia.server.aggregation.central_privacy import (
        CentralPrivacy as CentralPrivacy,
    )
    from consortia.server.aggregation.coordinate_wise import (
        FedMedian as FedMedian,
    )
    from consortia.server.aggregation.coordinate_wise import (
        FedTrimmedAvg as FedTrimmedAvg,
    )
    from consortia.server.aggregation.factory import (
        STRATEGIES as STRATEGIES,
    )
    from consortia.server.aggregation.factory import (
        build_aggregation as build_aggregation,
    )
    from consortia.server.aggregation.factory import (
        build_strategy as build_strategy,
    )
    from consortia.server.aggregation.fedavg import (
        FedAvg as FedAvg,
    )
    from consortia.server.aggregation.fedavg import (
        FedProx as FedProx,
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
    from consortia.server.aggregation.fedopt import (
        FedAdam as FedAdam,
    )
    from consortia.server.aggregation.fedopt import (
        FedAvgM as FedAvgM,
    )
    from consortia.server.aggregation.fedopt import (
        FedOpt as FedOpt,
    )
    from consortia.server.aggregation.fedopt import (
        FedYogi as FedYogi,
    )
    from consortia.server.aggregation.krum import (
        Krum as Krum,
    )
    from consortia.server.aggregation.krum import (
        MultiKrum as MultiKrum,
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
    "NO_USABLE_UPDATE",
    "OPTIMIZER_KINDS",
    "RECORD_CENTRAL_PRIVACY",
    "RECORD_SECURE_AGGREGATION",
    "REPORT_KEPT",
    "STRATEGIES",
    "UPDATE_NORM",
    "Aggregation",
    "AggregationResult",
    "AggregationStrategy",
    "CentralPrivacy",
    "CentralPrivacyAggregation",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "OptimizerKind",
    "RoundOutcome",
    "RoundPlan",
    "ServerOptimizer",
    "SiteUpdate",
    "StrategyStateError",
    "TooFewUpdatesError",
    "UpdateShapeError",
    "UpdateValidator",
    "build_aggregation",
    "build_strategy",
    "check_update",
    "coordinate_median",
    "krum_scores",
    "krum_select",
    "krum_updates_needed",
    "require_linear",
    "trimmed_count",
    "trimmed_mean",
    "update_norm",
    "update_norms",
    "weighted_average",
]

_EXPORTS = {
    "ACCOUNTANT_NAME": "central_privacy",
    "Aggregation": "aggregation",
    "AggregationResult": "strategy",
    "AggregationStrategy": "strategy",
    "CentralPrivacy": "central_privacy",
    "CentralPrivacyAggregation": "central_aggregation",
    "DETAIL_BYZANTINE_SITES": "strategy",
    "DETAIL_KRUM_SCORES": "strategy",
    "DETAIL_SERVER_LEARNING_RATE": "strategy",
    "DETAIL_SERVER_STEP": "strategy",
    "DETAIL_TRIMMED_PER_END": "strategy",
    "FedAdam": "fedopt",
    "FedAvg": "fedavg",
    "FedAvgM": "fedopt",
    "FedMedian": "coordinate_wise",
    "FedOpt": "fedopt",
    "FedProx": "fedavg",
    "FedTrimmedAvg": "coordinate_wise",
    "FedYogi": "fedopt",
    "Krum": "krum",
    "MIN_UPDATES_FOR_OUTLIERS": "update_validation",
    "MultiKrum": "krum",
    "NO_USABLE_UPDATE": "aggregation",
    "OPTIMIZER_KINDS": "server_optimizer",
    "OptimizerKind": "server_optimizer",
    "RECORD_CENTRAL_PRIVACY": "central_aggregation",
    "RECORD_SECURE_AGGREGATION": "aggregation",
    "REPORT_KEPT": "aggregation",
    "RoundOutcome": "aggregation",
    "RoundPlan": "aggregation",
    "STRATEGIES": "factory",
    "ServerOptimizer": "server_optimizer",
    "SiteUpdate": "strategy",
    "StrategyStateError": "server_optimizer",
    "TooFewUpdatesError": "robust",
    "UPDATE_NORM": "update_validation",
    "UpdateShapeError": "fedavg",
    "UpdateValidator": "update_validation",
    "build_aggregation": "factory",
    "build_strategy": "factory",
    "check_update": "fedavg",
    "coordinate_median": "robust",
    "krum_scores": "robust",
    "krum_select": "robust",
    "krum_updates_needed": "robust",
    "require_linear": "aggregation",
    "trimmed_count": "robust",
    "trimmed_mean": "robust",
    "update_norm": "update_validation",
    "update_norms": "update_validation",
    "weighted_average": "fedavg",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
