"""Secure aggregation (SecAgg+) over the Grid, in our Message-API round loop.

A *session* (docs/secure-aggregation.md) starts with one key exchange
(`train.secagg_keys`) among the run's training sites; every round then costs one extra
exchange: the ordinary `train` message carries the neighbours' public keys and the
round's participants, the site answers with its update masked plus encrypted shares, and
`train.secagg_unmask` collects the shares that remove the masks from the sum. The server
learns the sum of the updates, never one of them. Each site's vector is its model delta
times its weight `examples / weight_norm`, followed by that weight, so the sum divides
into FedAvg's weighted mean.

`SecureAggregation` is the round loop's face of all this (the `Aggregation` interface of
`consortia.server.aggregation.aggregation`): it opens each round (leaving out sites over
their roster's example cap), runs the SecAgg+ round with `SecureAggregator`, and hands
the unmasked mean to the strategy. `secure_aggregation_decision` says, once per run,
whether the run aggregates securely.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from consortia.common.config.security_settings import SecureAggregationSettings
from consortia.common.config.settings import RunSettings
from consortia.common.secure_aggregation.config import SecAggConfig, SecAggError
from consortia.common.secure_aggregation.roster import KeyAdvert, secure_required
from consortia.common.secure_aggregation.wire import (
    decode_adverts,
    decode_public_keys,
    decode_unmask_shares,
    encode_public_keys,
    encode_round,
    encode_unmask_request,
)
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import RecordFieldError, get_config_record
from consortia.server.aggregation.aggregation import (
    RECORD_SECURE_AGGREGATION,
    Aggregation,
    RoundOutcome,
    RoundPlan,
    require_linear,
)
from consortia.server.aggregation.strategy import AggregationStrategy
from consortia.server.exchange.sites import Site
from consortia.server.exchange.updates import AcceptedUpdate
from consortia.server.secure_aggregation.session import SecAggServer

__all__ = [
    "NOT_IN_SECURE_ROUND",
    "SecureAggregation",
    "SecureAggregator",
    "secure_aggregation_decision",
    "secure_average",
]

logger = logging.getLogger("consortia.server")

Exchange = Callable[[Sequence[Message]], dict[int, Message]]

# The sum of the weights the sites masked must match the sum of the example counts they
# declared in the clear (to within quantisation): a site cannot weigh itself up.
_WEIGHT_TOLERANCE = 1e-4
NOT_IN_SECURE_ROUND = "could not take part in this round's secure aggregation"


class SecureAggregator:
    """The server's side of secure aggregation for one run (sessions and rounds)."""

    def __init__(
        self, settings: SecureAggregationSettings, vector_size: int, exchange: Exchange
    ) -> None:
        self.settings = settings
        self.vector_size = vector_size
        self._exchange = exchange
        self.session: SecAggServer | None = None
        self.sessions_started = 0
        # The current round's state.
        self.participants: list[int] = []
        self.weight_norm = 0.0
        self.failure: str | None = None
        self.setup_dropped: list[int] = []

    def _config(self, nodes: Sequence[int]) -> SecAggConfig:
        threshold, neighbours = self.settings.parameters_for(len(nodes))
        return SecAggConfig(
            session=secrets.randbits(63),
            participants=tuple(sorted(nodes)),
            threshold=threshold,
            neighbours=neighbours,
            clip_range=self.settings.clip_range,
            vector_size=self.vector_size,
        )

    def _ask(
        self, action: str, round_number: int, contents: Mapping[int, RecordDict]
    ) -> dict[int, ConfigRecord]:
        messages = []
        for node_id, content in contents.items():
            content[rk.CONFIG_KEY] = ConfigRecord({rk.CFG_ROUND: round_number})
            messages.append(
                Message(
                    content,
                    dst_node_id=node_id,
                    message_type=f"{MessageType.TRAIN}.{action}",
                    group_id=str(round_number),
                )
            )
        replies = self._exchange(messages)
        answers: dict[int, ConfigRecord] = {}
        for node_id in contents:
            reply = replies.get(node_id)
            if reply is None or reply.has_error():
                reason = "no valid reply" if reply is None else reply.error.reason
                logger.warning(
                    "round %d: node %d left %s: %s", round_number, node_id, action, reason
                )
                continue
            try:
                answers[node_id] = get_config_record(reply.content, rk.SECAGG_KEY)
            except RecordFieldError as err:
                logger.warning("round %d: node %d: %s", round_number, node_id, err)
        return answers

    def _start_session(self, round_number: int, nodes: Sequence[int]) -> SecAggServer:
        config = self._config(nodes)
        session = SecAggServer(config)
        answers = self._ask(
            rk.ACTION_SECAGG_KEYS,
            round_number,
            {
                node: RecordDict({rk.SECAGG_CONFIG_KEY: ConfigRecord(config.to_config())})
                for node in config.participants
            },
        )
        keys: dict[int, dict[str, bytes]] = {}
        adverts: dict[int, KeyAdvert] = {}
        for node, record in answers.items():
            decoded = decode_public_keys(record, f"node {node}")
            signed = decode_adverts(record, f"node {node}")
            if set(decoded) != {node} or not set(signed) <= {node}:
                raise SecAggError(f"node {node} sent keys for other nodes")
            keys[node] = decoded[node]
            adverts.update(signed)
        self.setup_dropped = [n for n in config.participants if n not in keys]
        session.receive_public_keys(keys, adverts)
        self.sessions_started += 1
        logger.info(
            "secure aggregation session %d: %d of %d sites (threshold %d, %d neighbours)",
            self.sessions_started,
            len(keys),
            len(config.participants),
            config.threshold,
            config.neighbours,
        )
        return session

    def prepare(
        self, round_number: int, selected: Sequence[int], weight_norm: float
    ) -> dict[int, dict[str, ConfigRecord]]:
        """Open round `round_number` for the `selected` training nodes (a new session
        first when needed); returns, per node that takes part, the records to add to its
        train message. Raises `SecAggError` when too few sites can take part."""
        self.failure = None
        self.setup_dropped = []
        self.weight_norm = weight_norm
        wanted = sorted(selected)
        if self.session is None or self.session.needs_rekey(wanted):
            self.session = None
            self.session = self._start_session(round_number, wanted)
        self.participants = self.session.usable(wanted)
        self.session.begin_round(round_number, self.participants)
        round_record = ConfigRecord(encode_round(round_number, self.participants))
        return {
            node: {
                rk.SECAGG_PEERS_KEY: ConfigRecord(
                    encode_public_keys(self.session.keys_for(node), self.session.adverts_for(node))
                ),
                rk.SECAGG_ROUND_KEY: round_record,
            }
            for node in self.participants
        }

    def fail(self, reason: str) -> None:
        """Record that this round cannot be aggregated securely; the session ends with it
        (the next round starts a new one, at the cost of one key exchange)."""
        self.failure = reason
        self.session = None

    def finish(
        self, round_number: int, masked: Mapping[int, tuple[np.ndarray, Mapping[int, bytes]]]
    ) -> np.ndarray:
        """Unmask the sum of the masked vectors (float64)."""
        if self.session is None:
            raise SecAggError("no secure-aggregation session")
        session = self.session
        active, _ = session.receive_masked(masked)
        requests = {
            node: RecordDict(
                {
                    rk.SECAGG_KEY: ConfigRecord(
                        encode_unmask_request(round_number, *session.unmask_request(node))
                    )
                }
            )
            for node in active
        }
        answers = self._ask(rk.ACTION_SECAGG_UNMASK, round_number, requests)
        return session.unmask(
            {node: decode_unmask_shares(record, f"node {node}") for node, record in answers.items()}
        )

    @property
    def active(self) -> list[int]:
        return [] if self.session is None else list(self.session.active)

    def summary(self, unchanged: str | None) -> dict[str, object]:
        """What the results record about this round's secure aggregation."""
        dropped = [] if self.session is None else list(self.session.dropped)
        return {
            "session": self.sessions_started,
            "sites": len(self.participants),
            "threshold": None if self.session is None else self.session.config.threshold,
            "dropped": len(dropped) + len(self.setup_dropped),
            "status": "failed" if unchanged else "ok",
            "reason": unchanged,
        }


def secure_average(
    aggregator: SecureAggregator,
    round_number: int,
    weights: np.ndarray,
    accepted: Mapping[int, AcceptedUpdate],
) -> np.ndarray:
    """The next global model from the unmasked sum: each site masked its weighted delta
    `w_i * (new_i - global)` followed by `w_i = examples_i / weight_norm`, so the sum's
    last value divides the rest into FedAvg's weighted mean delta."""
    total = aggregator.finish(
        round_number,
        {node: (update.weights, update.shares or {}) for node, update in accepted.items()},
    )
    weight = float(total[-1])
    declared = sum(
        accepted[node].examples / aggregator.weight_norm
        for node in aggregator.active
        if node in accepted
    )
    if weight <= 0.0 or abs(weight - declared) > _WEIGHT_TOLERANCE * max(1.0, declared):
        raise SecAggError(
            f"the sites' masked weights sum to {weight:.6f}, their declared example counts "
            f"to {declared:.6f}: a site weighed its update differently than it declared"
        )
    delta = total[:-1] / weight
    return (weights.astype(np.float64) + delta).astype(weights.dtype)


class SecureAggregation(Aggregation):
    """Secure aggregation as the round loop sees it: each round a SecAgg+ round among the
    trainers (minus those over their example cap) whose unmasked mean the strategy applies.
    A round that cannot aggregate securely leaves the model as it is and ends the session.

    `cap_refusal` says why a site may not take part (its declared example count is over
    its roster cap), or None."""

    secure: ClassVar[bool] = True

    def __init__(
        self,
        strategy: AggregationStrategy,
        aggregator: SecureAggregator,
        cap_refusal: Callable[[Site], str | None],
    ) -> None:
        require_linear(strategy, "secure aggregation reveals only their sum")
        super().__init__(strategy)
        self.aggregator = aggregator
        self._cap_refusal = cap_refusal

    @property
    def masked_size(self) -> int | None:
        return self.aggregator.vector_size

    def open_round(self, round_number: int, trainers: Sequence[Site]) -> RoundPlan:
        """The trainers that take part, each with its SecAgg+ records (a new session first
        when needed). Sites over their example cap sit out (F5); when too few sites can
        take part the round asks nobody and `failure` says why."""
        capped = {}
        for site in trainers:
            reason = self._cap_refusal(site)
            if reason is not None:
                capped[site.name] = reason
        left = [site for site in trainers if site.name not in capped]
        # Messages carry the aggregator's weight norm, also when nobody trains.
        plan = RoundPlan([], {}, capped, NOT_IN_SECURE_ROUND, None, self.aggregator.weight_norm)
        if not left:
            return plan
        try:
            records = self.aggregator.prepare(
                round_number,
                [site.node_id for site in left],
                weight_norm=float(max(site.num_train for site in left)),
            )
        except SecAggError as err:
            self.aggregator.fail(str(err))
            norm = self.aggregator.weight_norm
            return RoundPlan([], {}, capped, NOT_IN_SECURE_ROUND, str(err), norm)
        asked = [site for site in left if site.node_id in records]
        weight_norm = self.aggregator.weight_norm
        return RoundPlan(asked, records, capped, NOT_IN_SECURE_ROUND, None, weight_norm)

    def aggregate(
        self,
        round_number: int,
        weights: np.ndarray,
        accepted: Mapping[int, AcceptedUpdate],
        names: Mapping[int, str],
        asked: int,
    ) -> RoundOutcome:
        """Unmask the sum of the accepted masked updates and apply its mean; a SecAgg+
        failure leaves the model and ends the session."""
        try:
            mean = secure_average(self.aggregator, round_number, weights, accepted)
        except SecAggError as err:
            self.aggregator.fail(str(err))
            return RoundOutcome(weights, f"secure aggregation failed: {err}")
        new = self.strategy.apply_mean(weights, mean)
        return RoundOutcome(new, None, self.strategy.mean_details())

    def nothing_to_aggregate(self) -> str:
        reason = super().nothing_to_aggregate()
        reason = self.aggregator.failure or reason
        self.aggregator.fail(reason)
        return reason

    def participants(
        self,
        accepted: Mapping[int, AcceptedUpdate],
        names: Mapping[int, str],
        unchanged: str | None,
    ) -> list[str]:
        """The sites whose masked updates the sum holds, when the round aggregated."""
        if unchanged is None:
            return sorted(names[node] for node in self.aggregator.active)
        return super().participants(accepted, names, unchanged)

    def round_record(self, unchanged: str | None) -> dict[str, Any]:
        return {RECORD_SECURE_AGGREGATION: self.aggregator.summary(unchanged)}


def secure_aggregation_decision(
    settings: RunSettings, training_sites: int, strategy: str
) -> tuple[bool, str]:
    """Whether the run aggregates securely, and why: decided once per run from the
    `training_sites` that joined, never downgraded later (a round that cannot aggregate
    securely fails instead)."""
    # What counts is how many sites each round sums over (sites_per_round may sample).
    per_round = min(settings.sites_per_round or training_sites, training_sites)
    mode = settings.secure_aggregation.mode
    # With a roster of enough training sites the sites refuse plain updates (F6).
    on = mode != "off" and (settings.secure_aggregation_for(per_round) or secure_required(settings))
    if on:
        reason = f"mode {mode!r}, {per_round} training sites per round"
    elif mode != "off" and settings.central_privacy.enabled:
        reason = "central privacy clips each site's update at the server"
    elif mode != "off" and not settings.strategy.linear:
        reason = f"strategy {strategy!r} needs each site's update"
    elif mode == "off":
        reason = "mode 'off'"
    else:
        reason = f"{per_round} training site(s) per round, fewer than min_sites"
    return on, reason
