"""Closing a round: its aggregation's plan recorded, the trainers' replies checked, the
quorum kept, the next model aggregated, checkpointed, audited and recorded.

`RoundAggregation` calls the run's `Aggregation` (plain, central DP or secure) only
through its interface; what differs between them stays in them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Message

from consortia.common.audit.log import AGGREGATED, GLOBAL_MODEL, PRIVACY_SPENT, SITE_LEFT_OUT
from consortia.common.networks.weights import WeightLayout
from consortia.server.aggregation.aggregation import Aggregation, RoundOutcome, RoundPlan
from consortia.server.exchange.site_roster import SiteRoster
from consortia.server.exchange.sites import Site
from consortia.server.exchange.updates import AcceptedUpdate, UpdateCollector
from consortia.server.exchange.verified_exchange import VerifiedExchange
from consortia.server.run.folder import RunFolder

__all__ = ["SECURE_AGGREGATION_FAILED", "RoundAggregation"]

logger = logging.getLogger("consortia.server")

# Run-folder event: a secure round could not start.
SECURE_AGGREGATION_FAILED = "secure_aggregation_failed"


class RoundAggregation:
    """Opens and closes each round of a run through its one `Aggregation`."""

    def __init__(
        self,
        folder: RunFolder,
        layout: WeightLayout,
        roster: SiteRoster,
        channel: VerifiedExchange,
        collector: UpdateCollector,
        aggregation: Aggregation,
    ) -> None:
        self.folder = folder
        self.layout = layout
        self.roster = roster
        self.channel = channel
        self.collector = collector
        self.aggregation = aggregation

    def open(self, round_number: int, trainers: Sequence[Site]) -> RoundPlan:
        """The aggregation's plan for the round; the trainers it leaves out and why the
        round cannot aggregate, if it knows already, are recorded."""
        plan = self.aggregation.open_round(round_number, trainers)
        for name, reason in plan.left_out.items():
            logger.warning("round %d: %s left out: %s", round_number, name, reason)
            self.folder.event(SITE_LEFT_OUT, round=round_number, site=name, reason=reason)
        if plan.failure is not None:
            logger.warning(
                "round %d: secure aggregation could not start: %s", round_number, plan.failure
            )
            self.folder.event(SECURE_AGGREGATION_FAILED, round=round_number, reason=plan.failure)
        return plan

    def close(
        self,
        round_number: int,
        weights: np.ndarray,
        replies: Mapping[int, Message],
        plan: RoundPlan,
        not_asked: Sequence[Site] = (),
    ) -> np.ndarray:
        """Check the trainers' replies, keep the quorum, aggregate and record the round."""
        accepted, rejected = self.collector.collect(
            round_number,
            weights,
            replies,
            plan.asked,
            self.aggregation.masked_size,
            self.channel.rejected,
        )
        for site in not_asked:
            rejected[site.name] = plan.left_out.get(site.name, plan.not_asked_reason)
        self.roster.check_round_quorum(
            round_number, len(accepted), [*plan.asked, *not_asked], rejected
        )
        names = {site.node_id: site.name for site in plan.asked}
        if accepted:
            outcome = self.aggregation.aggregate(
                round_number, weights, accepted, names, asked=len(plan.asked)
            )
        else:
            outcome = RoundOutcome(weights, self.aggregation.nothing_to_aggregate())
        if outcome.unchanged is not None:
            logger.warning("round %d: model unchanged: %s", round_number, outcome.unchanged)
        self._record(round_number, outcome, accepted, names, rejected)
        return outcome.weights

    def _record(
        self,
        round_number: int,
        outcome: RoundOutcome,
        accepted: Mapping[int, AcceptedUpdate],
        names: Mapping[int, str],
        rejected: Mapping[str, str],
    ) -> None:
        """Checkpoint the round's model; audit and record who took part and what they spent."""
        unchanged = outcome.unchanged
        participants = self.aggregation.participants(accepted, names, unchanged)
        folder = self.folder
        checkpoint, digest = folder.checkpoint(round_number, self.layout.unflatten(outcome.weights))
        spent = {names[n]: u.privacy for n, u in accepted.items() if u.privacy is not None}
        for site, record in spent.items():
            folder.event(PRIVACY_SPENT, round=round_number, site=site, **record)
        folder.event(
            AGGREGATED,
            round=round_number,
            participants=participants,
            secure_aggregation=self.aggregation.secure,
            unchanged=unchanged,
        )
        folder.event(GLOBAL_MODEL, round=round_number, sha256=digest, checkpoint=checkpoint)
        folder.stage(privacy=self.collector.privacy.section())
        # Each site's privacy-ledger head as its reply carried it: per round, and the last
        # one per site for the provenance (the privacy audit checks ledgers against them).
        heads = {names[n]: u.ledger_head for n, u in accepted.items() if u.ledger_head is not None}
        folder.add_ledger_heads(heads)
        folder.update_round(
            round_number,
            participants=participants,
            train={names[node]: update.info for node, update in accepted.items()},
            left_out=dict(rejected),
            total_examples=int(sum(update.examples for update in accepted.values())),
            checkpoint=checkpoint,
            model_sha256=digest,
            privacy=spent,
            ledger_heads=heads,
            **self.aggregation.round_record(unchanged),
            strategy={
                "name": self.aggregation.strategy.name,
                "unchanged": unchanged,
                **outcome.report,
            },
        )
        release = self.aggregation.release_record(unchanged)
        if release:
            folder.update_round(round_number, **release)
