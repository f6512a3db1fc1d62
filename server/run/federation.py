"""The coordinator's round loop over Flower's Grid (Message API).

Each wave sends the current global model to every site at once: selected training sites
get a `train` message (evaluate the incoming model on their test split, then train it),
all other sites an `evaluate` message. Fusing evaluation into the training wave halves
the message round trips per round. So wave r evaluates the global model of round r-1 and
trains round r; a last `evaluate` wave scores the final model. `rounds[k]` in the
results holds the training of round k and the evaluation of the model it produced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Message
from flwr.serverapp import Grid

from consortia.common.audit.log import (
    GLOBAL_MODEL,
    RUN_STOPPED,
)
from consortia.common.config.settings import Role, RunSettings
from consortia.common.errors import ConsortiaError
from consortia.common.networks.models import build_model
from consortia.common.networks.warm_start import WARM_START, load_warm_start
from consortia.common.networks.weights import WeightLayout
from consortia.common.wire.run_identity import RunIdentity
from consortia.server.aggregation.aggregation import Aggregation
from consortia.server.aggregation.factory import build_aggregation, build_strategy
from consortia.server.aggregation.update_validation import UpdateValidator
from consortia.server.exchange.reply_verifier import ReplyVerifier
from consortia.server.exchange.site_roster import QuorumLostError, SiteRoster
from consortia.server.exchange.sites import Site
from consortia.server.exchange.updates import UpdateCollector
from consortia.server.exchange.verified_exchange import VerifiedExchange
from consortia.server.report.tensorboard_log import open_tensorboard
from consortia.server.run.folder import RunFolder
from consortia.server.run.privacy import RunPrivacy
from consortia.server.run.round_aggregation import RoundAggregation
from consortia.server.run.round_evaluation import record_evaluation
from consortia.server.run.saliency_store import store_saliency
from consortia.server.run.state import RunState, RunStateError, RunStateStore
from consortia.server.run.wave import Wave
from consortia.server.secure_aggregation.secure_round import secure_aggregation_decision

__all__ = ["Federation", "FederationError", "QuorumLostError", "Site"]

logger = logging.getLogger("consortia.server")


class FederationError(ConsortiaError):
    """The run cannot go on (too few sites, no training site, every update rejected)."""


class Federation:
    """Runs one study over a Grid and records everything in a `RunFolder`.

    The loop itself never asks how a round aggregates: `aggregation` (plain, central DP
    or secure, chosen once when the run starts) opens each round and combines its updates.
    """

    def __init__(
        self,
        grid: Grid,
        settings: RunSettings,
        folder: RunFolder,
        *,
        verifier: ReplyVerifier | None = None,
        identity: RunIdentity | None = None,
        poll_interval_s: float = 0.05,
        resume_from: RunState | None = None,
    ) -> None:
        self.grid = grid
        self.settings = settings
        self.folder = folder
        self.identity = identity or RunIdentity.of(settings)
        self.channel = VerifiedExchange(
            grid, folder, verifier or ReplyVerifier(None, 0), poll_interval_s=poll_interval_s
        )
        with torch.random.fork_rng():
            torch.manual_seed(settings.seed)  # the run's seed fixes the initial model too
            model = build_model(settings.model.to_model_settings())
        self.layout = WeightLayout.of(model.state_dict())
        self.initial_weights = self.layout.flatten(model.state_dict())
        self.privacy = RunPrivacy(settings)
        self.roster = SiteRoster(grid, settings, self.identity, folder, self.channel, self.privacy)
        self.sites = self.roster.sites
        self.wave = Wave(
            settings,
            settings.model.to_model_settings(),
            self.layout.fingerprint(),
            self.identity,
            folder,
            self.roster,
            self.channel,
        )
        self.collector = UpdateCollector(
            folder, self.privacy, UpdateValidator(settings.validation), dp=settings.privacy.enabled
        )
        self.strategy = build_strategy(settings.strategy)
        self.aggregation: Aggregation = Aggregation(self.strategy)  # chosen in `_start`
        self.resume_from = resume_from
        self.tensorboard = (
            open_tensorboard(folder.path, settings.model_dump(mode="json"))
            if settings.report.tensorboard
            else None
        )
        self.ended_early: str | None = None
        self.stopped: str | None = None  # why the run stopped before its last round

    def _record_evaluation(
        self, model_round: int, replies: Mapping[int, Message], *, final: bool = False
    ) -> None:
        record_evaluation(
            self.folder, self.settings.task, self.sites, model_round, replies, intervals=final
        )
        if self.tensorboard is not None:
            entry = self.folder.round_entry(model_round)
            if entry is not None:
                self.tensorboard.log_round(entry)

    def _start(self) -> tuple[int, np.ndarray]:
        """Choose the run's aggregation; return the first round to run and the model it
        starts from: round 1 and the run-seeded initial model, or where a resumed run
        left off. Secure aggregation is decided once, from the training sites that
        joined, and never downgraded (a resumed run keeps the decision)."""
        settings = self.settings
        if self.resume_from is None:
            trainers = sum(site.role is Role.TRAIN for site in self.sites.values())
            secure, reason = secure_aggregation_decision(settings, trainers, self.strategy.name)
            logger.info("secure aggregation %s (%s)", "on" if secure else "off", reason)
            self.folder.update(secure_aggregation={"enabled": secure, "reason": reason})
        else:
            secure = settings.secure_aggregation.mode != "off" and (
                self.resume_from.secure_aggregation
            )
        self.aggregation = build_aggregation(
            settings,
            self.strategy,
            secure=secure,
            layout_size=self.layout.size,
            sites_per_round=len(self.roster.select_training_sites(1)),
            exchange=lambda messages, timeout_s: self.channel(messages, timeout_s),
            cap_refusal=self.roster.example_cap_refusal,
            on_central_spent=lambda spent: self.privacy.central.update(spent),
        )
        self.state = RunStateStore(
            self.folder, self.layout, self.aggregation, self.privacy, self.identity.config_hash
        )
        self.closing = RoundAggregation(
            self.folder, self.layout, self.roster, self.channel, self.collector, self.aggregation
        )
        if self.resume_from is not None:
            try:
                return self.state.resume(self.resume_from)
            except RunStateError as err:
                raise FederationError(str(err)) from None
        weights = self.initial_weights
        checkpoint, digest = self.folder.checkpoint(0, self.layout.unflatten(weights))
        self.folder.event(GLOBAL_MODEL, round=0, sha256=digest, checkpoint=checkpoint)
        self.folder.update_round(0, checkpoint=checkpoint, model_sha256=digest)
        self.state.save(0, checkpoint, digest)
        return 1, weights

    def _round(self, round_number: int, weights: np.ndarray) -> np.ndarray:
        """One round: wait for a quorum of connected sites, train and evaluate, aggregate."""
        online = self.roster.await_quorum(round_number)
        started = time.monotonic()
        trainers = self.roster.select_training_sites(round_number, online)
        offline = [
            s.name for s in self.roster.select_training_sites(round_number) if s not in trainers
        ]
        logger.info(
            "round %d/%d: training at %s%s",
            round_number,
            self.settings.rounds,
            ", ".join(s.name for s in trainers),
            f" (not connected: {', '.join(offline)})" if offline else "",
        )
        self.folder.event(
            "round_started",
            round=round_number,
            trainers=[s.name for s in trainers],
            not_connected=offline,
        )
        plan = self.closing.open(round_number, trainers)
        replies = self.wave.send(
            round_number, weights, plan.asked, plan.records, plan.weight_norm, online
        )
        self._record_evaluation(round_number - 1, replies)
        not_asked = [site for site in trainers if site not in plan.asked]
        weights = self.closing.close(round_number, weights, replies, plan, not_asked)
        duration = time.monotonic() - started
        self.folder.update_round(
            round_number,
            duration_s=round(duration, 3),
            upload_bytes=self.channel.upload_bytes[round_number],
            not_connected=offline,
        )
        self.folder.event("round_done", round=round_number, duration_s=duration)
        return weights

    def _stop(self, round_number: int, err: QuorumLostError) -> None:
        self.stopped = str(err)
        logger.error("run stops: %s", err)
        self.folder.event(RUN_STOPPED, round=round_number, reason=str(err))
        self.folder.update(stopped={"round": round_number, "reason": str(err)})

    def run(self) -> np.ndarray:
        """Discover sites, run every round, evaluate the final model; returns its weights.
        When a round's quorum cannot be met the run stops (`stopped` says why) with its
        state saved after the last completed round, to resume from later."""
        if self.settings.model.init is not None and self.resume_from is None:
            # the approved warm start, checked before any site is asked
            warm = load_warm_start(self.settings, self.layout)
            self.initial_weights = warm.weights
            self.folder.event(WARM_START, **warm.to_record())
        self.roster.discover_sites()
        first_round, weights = self._start()
        for round_number in range(first_round, self.settings.rounds + 1):
            self.ended_early = self.roster.too_few_trainers()
            if self.ended_early is not None:
                logger.warning("training ends before round %d: %s", round_number, self.ended_early)
                self.folder.update(ended_early=self.ended_early)
                self.folder.event("ended_early", round=round_number, reason=self.ended_early)
                break
            try:
                weights = self._round(round_number, weights)
            except QuorumLostError as err:
                self._stop(round_number, err)
                return weights
            last = self.folder.record.rounds[-1]
            self.state.save(round_number, str(last.checkpoint), str(last.model_sha256))
        last_round = max((entry.round for entry in self.folder.record.rounds), default=0)
        online = self.roster.online(self.settings.rounds + 1)
        final = self.wave.send(self.settings.rounds + 1, weights, trainers=(), online=online)
        self._record_evaluation(last_round, final, final=True)
        store_saliency(self.folder, self.sites, final)
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.folder.update(node_audit_heads=dict(self.channel.node_audit_heads))
        return weights
