"""Building a run's aggregation once: the strategy `[run.strategy]` names (one class per
name), and the `Aggregation` around it (plain, central DP or secure aggregation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flwr.app import Message

from consortia.common.config.settings import RunSettings
from consortia.common.config.strategy_settings import StrategySettings
from consortia.server.aggregation.aggregation import Aggregation
from consortia.server.aggregation.central_aggregation import CentralPrivacyAggregation
from consortia.server.aggregation.central_privacy import CentralPrivacy
from consortia.server.aggregation.coordinate_wise import FedMedian, FedTrimmedAvg
from consortia.server.aggregation.fedavg import FedAvg, FedProx
from consortia.server.aggregation.fedopt import FedAdam, FedAvgM, FedYogi
from consortia.server.aggregation.krum import Krum, MultiKrum
from consortia.server.aggregation.strategy import AggregationStrategy
from consortia.server.exchange.sites import Site
from consortia.server.secure_aggregation.secure_round import SecureAggregation, SecureAggregator

__all__ = ["STRATEGIES", "build_aggregation", "build_strategy"]

# The class of each strategy name `[run.strategy] name` accepts.
STRATEGIES: dict[str, type[AggregationStrategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedavgm": FedAvgM,
    "median": FedMedian,
    "trimmed_mean": FedTrimmedAvg,
    "krum": Krum,
    "multi_krum": MultiKrum,
}


def build_strategy(settings: StrategySettings) -> AggregationStrategy:
    """The aggregation strategy that `[run.strategy]` describes."""
    strategy = STRATEGIES.get(settings.name)
    if strategy is None:
        raise ValueError(
            f"unknown strategy {settings.name!r}, expected one of {sorted(STRATEGIES)}"
        )
    return strategy(settings)


def build_aggregation(
    settings: RunSettings,
    strategy: AggregationStrategy,
    *,
    secure: bool,
    layout_size: int,
    sites_per_round: int,
    exchange: Callable[[Sequence[Message], float], dict[int, Message]],
    cap_refusal: Callable[[Site], str | None],
    on_central_spent: Callable[[dict[str, Any]], None],
) -> Aggregation:
    """The run's aggregation, chosen once: secure aggregation when `secure` (its SecAgg+
    messages go through `exchange` with the stage timeout; `cap_refusal` leaves sites over
    their example cap out), else central DP when `[run.central_privacy]` is enabled (noise
    for `sites_per_round` sites; `on_central_spent` gets the spend after each release),
    else plain aggregation. `layout_size`: the length of the flat model."""
    if secure:
        stage_timeout = settings.secure_aggregation.stage_timeout_s
        aggregator = SecureAggregator(
            settings.secure_aggregation,
            layout_size + 1,  # the masked delta, then the site's weight
            lambda messages: exchange(messages, stage_timeout),
        )
        return SecureAggregation(strategy, aggregator, cap_refusal)
    if settings.central_privacy.enabled:
        central = CentralPrivacy(
            settings.central_privacy, sites_per_round=sites_per_round, layout_size=layout_size
        )
        return CentralPrivacyAggregation(strategy, central, on_central_spent)
    return Aggregation(strategy)
