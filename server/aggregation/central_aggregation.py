"""Central (client-level) differential privacy as a wrapper around the run's strategy.

`CentralPrivacyAggregation` hands the round's updates to `CentralPrivacy` (Flower's
`DifferentialPrivacyServerSideFixedClipping` around Flower's `FedAvg`, with its
accountant) and gives the noised mean it releases to the strategy's `apply_mean` (a
linear strategy: the settings refuse any other with central privacy). When Flower
releases nothing the model stays and nothing is charged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from consortia.server.aggregation.aggregation import Aggregation, RoundOutcome, require_linear
from consortia.server.aggregation.central_privacy import CentralPrivacy
from consortia.server.aggregation.strategy import AggregationStrategy
from consortia.server.exchange.updates import AcceptedUpdate

__all__ = ["RECORD_CENTRAL_PRIVACY", "CentralPrivacyAggregation"]

# Key of a round's entry in results.json: whether the round released a model, and why not.
RECORD_CENTRAL_PRIVACY = "central_privacy"
_RELEASED = "released"
_REASON = "reason"


class CentralPrivacyAggregation(Aggregation):
    """Clipped, uniformly averaged, noised updates (by Flower), applied by the strategy.

    `on_spent` receives the privacy spent so far after every attempted release (the run's
    privacy section records it)."""

    def __init__(
        self,
        strategy: AggregationStrategy,
        central: CentralPrivacy,
        on_spent: Callable[[dict[str, Any]], None],
    ) -> None:
        require_linear(strategy, "central privacy releases only a noised mean")
        super().__init__(strategy)
        self.central = central
        self._on_spent = on_spent

    def aggregate(
        self,
        round_number: int,
        weights: np.ndarray,
        accepted: Mapping[int, AcceptedUpdate],
        names: Mapping[int, str],
        asked: int,
    ) -> RoundOutcome:
        """The strategy's step from Flower's noised mean; the model stays when Flower
        releases nothing (`CentralPrivacy.last_refusal` says why)."""
        updates = self.site_updates(accepted, names)
        released = self.central.aggregate(
            round_number, weights, [u.weights for u in updates], asked=asked
        )
        self._on_spent(self.central.spent())
        if released is None:
            return RoundOutcome(weights, self.central.last_refusal)
        new = self.strategy.apply_mean(weights, released)
        return RoundOutcome(new, None, self.strategy.mean_details())

    def release_record(self, unchanged: str | None) -> dict[str, Any]:
        return {RECORD_CENTRAL_PRIVACY: {_RELEASED: unchanged is None, _REASON: unchanged}}

    def state(self) -> dict[str, Any] | None:
        return self.central.state()

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.central.restore(state)
