"""One wave of a round: the current global model to every connected site at once.

Selected training sites get a `train` message (evaluate the incoming model on their test
split, then train it), all other sites an `evaluate` message; under secure aggregation
each trainer's message also carries its SecAgg+ records. Once the quorum of trainers (or
of sites, in an evaluation-only wave) answered, the others get `straggler_timeout_s` more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from consortia.common.config.model_settings import ModelSettings
from consortia.common.config.settings import RunSettings
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.run_identity import RunIdentity
from consortia.server.exchange.messaging import Quorum
from consortia.server.exchange.site_roster import SiteRoster
from consortia.server.exchange.sites import Site
from consortia.server.exchange.verified_exchange import VerifiedExchange
from consortia.server.run.folder import RunFolder

__all__ = ["EVENT_FAILED", "EVENT_REPLIED", "EVENT_SENT", "Wave", "weights_record"]

# Run-folder events of a wave, per site.
EVENT_SENT = "sent"
EVENT_REPLIED = "replied"
EVENT_FAILED = "failed"
_TRAIN = "train"
_EVALUATE = "evaluate"

SecureRecords = Mapping[int, Mapping[str, ConfigRecord]]


def weights_record(weights: np.ndarray) -> ArrayRecord:
    """The flat global model as the one array of a message's array record."""
    return ArrayRecord({rk.WEIGHTS_ARRAY: Array(np.ascontiguousarray(weights))})


class Wave:
    """Builds and sends a round's train and evaluate messages, and records who answered."""

    def __init__(
        self,
        settings: RunSettings,
        model: ModelSettings,
        layout_fingerprint: str,
        identity: RunIdentity,
        folder: RunFolder,
        roster: SiteRoster,
        channel: VerifiedExchange,
    ) -> None:
        self.settings = settings
        self.model = model
        self.layout_fingerprint = layout_fingerprint
        self.identity = identity
        self.folder = folder
        self.roster = roster
        self.channel = channel

    def instruction(
        self, round_number: int, *, train: bool, secure: bool = False, weight_norm: float = 0.0
    ) -> Instruction:
        """What a site is asked to do with the model of a train or evaluate message."""
        s = self.settings
        return Instruction(
            round=round_number,
            run_name=s.name,
            task=s.task,
            model=self.model,
            layout_fingerprint=self.layout_fingerprint,
            batch_size=s.training.batch_size,
            surface_metrics=round_number > s.rounds or s.surface_metrics == "every_round",
            local_epochs=s.training.local_epochs if train else 0,
            learning_rate=s.training.learning_rate if train else 0.0,
            seed=s.seed,
            evaluate_first=train,
            run_id=self.folder.path.name,
            total_rounds=s.rounds,
            privacy=s.privacy,
            dataset=s.dataset,
            app_hash=self.identity.app_hash,
            secure=secure,
            weight_norm=weight_norm,
            proximal_mu=s.strategy.proximal_mu if train else 0.0,
        )

    def messages(
        self,
        round_number: int,
        weights: np.ndarray,
        train_ids: set[int],
        targets: Iterable[int],
        secure: SecureRecords | None,
        weight_norm: float,
    ) -> list[Message]:
        """A train message to each of `train_ids`, an evaluate message to the other
        `targets`; each recorded as sent."""
        arrays = weights_record(weights)
        configs = {
            train: self.instruction(
                round_number, train=train, secure=secure is not None, weight_norm=weight_norm
            ).to_config()
            for train in (True, False)
        }
        messages = []
        for node_id in targets:
            train = node_id in train_ids
            content = RecordDict({rk.ARRAYS_KEY: arrays, rk.CONFIG_KEY: configs[train]})
            if train and secure is not None:
                for key, record in secure[node_id].items():
                    content[key] = record
            messages.append(
                Message(
                    content,
                    dst_node_id=node_id,
                    message_type=MessageType.TRAIN if train else MessageType.EVALUATE,
                    group_id=str(round_number),
                    # An unanswered message expires with the round: a node that restarts
                    # later does not train a round that is over.
                    ttl=self.settings.round_timeout_s,
                )
            )
            self.folder.event(
                EVENT_SENT,
                round=round_number,
                site=self.roster.sites[node_id].name,
                kind=_TRAIN if train else _EVALUATE,
            )
        return messages

    def send(
        self,
        round_number: int,
        weights: np.ndarray,
        trainers: Iterable[Site],
        secure: SecureRecords | None = None,
        weight_norm: float = 0.0,
        online: Iterable[int] | None = None,
    ) -> dict[int, Message]:
        """Send the wave to the connected sites (`online`, default all) and return the
        replies by node id, once all came, the round timed out, or the quorum's grace ran out."""
        sites = self.roster.sites
        train_ids = {site.node_id for site in trainers}
        targets = sorted(sites if online is None else set(online) & set(sites))
        messages = self.messages(round_number, weights, train_ids, targets, secure, weight_norm)

        def on_reply(node_id: int, reply: Message) -> None:
            site = sites[node_id].name
            if reply.has_error():
                self.folder.event(
                    EVENT_FAILED, round=round_number, site=site, reason=reply.error.reason
                )
            else:
                self.folder.event(EVENT_REPLIED, round=round_number, site=site)

        counted = train_ids or set(targets)
        quorum = Quorum(
            counted, self.roster.quorum_size(len(counted)), self.settings.straggler_timeout_s
        )
        return self.channel(messages, self.settings.round_timeout_s, on_reply, quorum)
