"""How a round's checked updates become the next global model: the interface the round
loop calls, and plain aggregation, its simplest form.

The round loop (`consortia.server.run.federation`) chooses one `Aggregation` per run and
then calls only this interface, as Flower's `DifferentialPrivacyServerSideFixedClipping`
wraps a `FedAvg`: `open_round` says whom the round asks and what their train messages
carry, `aggregate` turns the accepted updates into the next model, and the `*_record`
methods say what results.json records about it. The three forms:

- `Aggregation` (this module): each site's update goes to the strategy as it is;
- `CentralPrivacyAggregation` (`central_aggregation`): Flower's fixed-clipping DP wrapper
  releases a noised mean, which the strategy applies;
- `SecureAggregation` (`consortia.server.secure_aggregation.secure_round`): a SecAgg+ round
  reveals only the sum of the masked updates, whose mean the strategy applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from flwr.app import ConfigRecord

from consortia.server.aggregation.strategy import (
    AggregationStrategy,
    SiteUpdate,
    TooFewUpdatesError,
)
from consortia.server.exchange.sites import Site
from consortia.server.exchange.updates import AcceptedUpdate

__all__ = [
    "NO_USABLE_UPDATE",
    "RECORD_SECURE_AGGREGATION",
    "REPORT_KEPT",
    "Aggregation",
    "RoundOutcome",
    "RoundPlan",
    "require_linear",
]

NO_USABLE_UPDATE = "no usable update"
# Keys of a round's entry in results.json that the aggregation writes.
RECORD_SECURE_AGGREGATION = "secure_aggregation"
# Key of the strategy's report: the sites whose updates the model uses.
REPORT_KEPT = "kept"


@dataclass(frozen=True)
class RoundPlan:
    """Whom a round asks to train and what their train messages carry.

    `records`: per trainer asked, the records its train message adds (None: plain
    messages). `left_out`: trainers not asked, by name, with the reason, to be recorded
    as left out now; `not_asked_reason` is what the round's results say for them.
    `failure`: why the round cannot aggregate, when it already knows.
    """

    asked: list[Site]
    records: Mapping[int, Mapping[str, ConfigRecord]] | None = None
    left_out: Mapping[str, str] = field(default_factory=dict)
    not_asked_reason: str = ""
    failure: str | None = None
    weight_norm: float = 0.0

    @property
    def secure(self) -> bool:
        """Whether the round's messages are those of a secure round."""
        return self.records is not None


@dataclass(frozen=True)
class RoundOutcome:
    """The next global model, why it equals the last one when it does, and what the
    strategy reports (e.g. which updates Krum kept)."""

    weights: np.ndarray
    unchanged: str | None = None
    report: dict[str, Any] = field(default_factory=dict)


def require_linear(strategy: AggregationStrategy, why: str) -> None:
    """Refuse a strategy that needs each site's update where the server sees only a mean
    or a sum (`why`: what it sees instead)."""
    if not strategy.linear:
        raise ValueError(f'strategy "{strategy.name}" needs each site\'s update; {why}')


class Aggregation:
    """Plain aggregation: every accepted update goes to the strategy as it is."""

    secure: ClassVar[bool] = False

    def __init__(self, strategy: AggregationStrategy) -> None:
        self.strategy = strategy

    @property
    def masked_size(self) -> int | None:
        """The length of a masked update under secure aggregation; None: plain updates."""
        return None

    def open_round(self, round_number: int, trainers: Sequence[Site]) -> RoundPlan:
        """The round asks every selected trainer, with plain train messages."""
        return RoundPlan(list(trainers))

    def aggregate(
        self,
        round_number: int,
        weights: np.ndarray,
        accepted: Mapping[int, AcceptedUpdate],
        names: Mapping[int, str],
        asked: int,
    ) -> RoundOutcome:
        """The next global model from the round's accepted updates (by node id; `names`:
        each node's site name; `asked`: how many trainers the round asked)."""
        try:
            result = self.strategy.aggregate(weights, self.site_updates(accepted, names))
        except TooFewUpdatesError as err:
            return RoundOutcome(weights, str(err))
        return RoundOutcome(result.weights, None, {REPORT_KEPT: result.kept, **result.details})

    @staticmethod
    def site_updates(
        accepted: Mapping[int, AcceptedUpdate], names: Mapping[int, str]
    ) -> list[SiteUpdate]:
        """The accepted updates as the strategy reads them, in the order accepted."""
        return [
            SiteUpdate(names[node], update.weights, update.examples)
            for node, update in accepted.items()
        ]

    def nothing_to_aggregate(self) -> str:
        """Why the model stays when no update was accepted (ends a secure session)."""
        return NO_USABLE_UPDATE

    def participants(
        self,
        accepted: Mapping[int, AcceptedUpdate],
        names: Mapping[int, str],
        unchanged: str | None,
    ) -> list[str]:
        """The sites the round's results name as its participants."""
        return sorted(names[node] for node in accepted)

    def round_record(self, unchanged: str | None) -> dict[str, Any]:
        """What the round's results record about how it aggregated."""
        return {RECORD_SECURE_AGGREGATION: None}

    def release_record(self, unchanged: str | None) -> dict[str, Any]:
        """What the round's results record after it (the central DP release); none here."""
        return {}

    def state(self) -> dict[str, Any] | None:
        """What a resumed run needs besides the strategy's state (the DP accountant)."""
        return None

    def restore(self, state: dict[str, Any] | None) -> None:
        """Resume from `state()`; plain aggregation keeps none."""
