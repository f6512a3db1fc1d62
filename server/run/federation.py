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
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from consortia.common.audit.check import audit_hashes
from consortia.common.audit.log import (
    AGGREGATED,
    GLOBAL_MODEL,
    PRIVACY_SPENT,
    RUN_RESUMED,
    RUN_STOPPED,
    SITE_LEFT_OUT,
    UPDATE_REJECTED,
)
from consortia.common.config.settings import Role, RunSettings
from consortia.common.errors import ConsortiaError
from consortia.common.networks.models import build_model
from consortia.common.networks.weights import WeightLayout
from consortia.common.secure_aggregation.config import SecAggError
from consortia.common.secure_aggregation.roster import secure_required
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.record_fields import RecordFieldError
from consortia.common.wire.records import ERROR_PRIVACY_BUDGET
from consortia.common.wire.run_identity import RunIdentity
from consortia.server.aggregation.central_privacy import CentralPrivacy
from consortia.server.aggregation.fedavg import UpdateShapeError
from consortia.server.aggregation.strategy import (
    DETAIL_SERVER_STEP,
    AggregationStrategy,
    SiteUpdate,
    StrategyStateError,
    TooFewUpdatesError,
    build_strategy,
)
from consortia.server.aggregation.update_validation import (
    UPDATE_NORM,
    UpdateValidator,
    update_norms,
)
from consortia.server.exchange.messaging import Quorum
from consortia.server.exchange.reply_verifier import ReplyVerifier
from consortia.server.exchange.site_roster import QuorumLostError, SiteRoster
from consortia.server.exchange.sites import Site
from consortia.server.exchange.updates import AcceptedUpdate, accept_update
from consortia.server.exchange.verified_exchange import VerifiedExchange
from consortia.server.report.tensorboard_log import open_tensorboard
from consortia.server.run.folder import RunFolder
from consortia.server.run.privacy import RunPrivacy
from consortia.server.run.round_evaluation import record_evaluation
from consortia.server.run.saliency_store import store_saliency
from consortia.server.run.state import RunState, load_strategy_state, save_strategy_state
from consortia.server.secure_aggregation.secure_round import SecureAggregator, secure_average

__all__ = ["Federation", "FederationError", "QuorumLostError", "Site"]

logger = logging.getLogger("consortia.server")


class FederationError(ConsortiaError):
    """The run cannot go on (too few sites, no training site, every update rejected)."""


def _to_record(weights: np.ndarray) -> ArrayRecord:
    return ArrayRecord({rk.WEIGHTS_ARRAY: Array(np.ascontiguousarray(weights))})


class Federation:
    """Runs one study over a Grid and records everything in a `RunFolder`."""

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
        self.model_settings = settings.model.to_model_settings()
        with torch.random.fork_rng():
            torch.manual_seed(settings.seed)  # the run's seed fixes the initial model too
            model = build_model(self.model_settings)
        self.layout = WeightLayout.of(model.state_dict())
        self.layout_fingerprint = self.layout.fingerprint()
        self.initial_weights = self.layout.flatten(model.state_dict())
        self.privacy = RunPrivacy(settings)
        self.roster = SiteRoster(grid, settings, self.identity, folder, self.channel, self.privacy)
        self.sites = self.roster.sites
        self.central: CentralPrivacy | None = None
        self.secure: SecureAggregator | None = None
        self.secure_on = False  # decided once, from the training sites that joined
        self.capped: dict[str, str] = {}  # this round's sites over their example cap, why
        if settings.secure_aggregation.mode != "off":
            stage_timeout = settings.secure_aggregation.stage_timeout_s
            self.secure = SecureAggregator(
                settings.secure_aggregation,
                self.layout.size + 1,
                lambda messages: self.exchange(messages, stage_timeout),
            )
        self.strategy: AggregationStrategy = build_strategy(settings.strategy)
        self.validator = UpdateValidator(settings.validation)
        self.resume_from = resume_from
        self.tensorboard = (
            open_tensorboard(folder.path, settings.model_dump(mode="json"))
            if settings.report.tensorboard
            else None
        )
        self.ended_early: str | None = None
        self.stopped: str | None = None  # why the run stopped before its last round

    # -- messaging -------------------------------------------------------------------------

    def exchange(
        self,
        messages: Sequence[Message],
        timeout_s: float,
        on_reply: Callable[[int, Message], None] | None = None,
    ) -> dict[int, Message]:
        """Push `messages`, pull replies as they arrive until all came or `timeout_s`;
        replies whose signatures fail are dropped (reasons in `self.channel.rejected`)."""
        return self.channel(messages, timeout_s, on_reply)

    def _instruction(
        self, round_number: int, *, train: bool, secure: bool = False, weight_norm: float = 0.0
    ) -> Instruction:
        s = self.settings
        return Instruction(
            round=round_number,
            run_name=s.name,
            task=s.task,
            model=self.model_settings,
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

    # -- discovery -------------------------------------------------------------------------

    def _wave(
        self,
        round_number: int,
        weights: np.ndarray,
        trainers: Iterable[Site],
        secure: Mapping[int, Mapping[str, ConfigRecord]] | None = None,
        weight_norm: float = 0.0,
        online: Iterable[int] | None = None,
    ) -> dict[int, Message]:
        """Train messages to `trainers`, evaluate messages to every other connected site;
        under secure aggregation each trainer's message carries its SecAgg+ records.
        Once the quorum of trainers (or of sites, in an evaluation-only wave) answered,
        the others get `straggler_timeout_s` more."""
        arrays = _to_record(weights)
        configs = {
            train: self._instruction(
                round_number, train=train, secure=secure is not None, weight_norm=weight_norm
            ).to_config()
            for train in (True, False)
        }
        train_ids = {site.node_id for site in trainers}
        targets = sorted(self.sites if online is None else set(online) & set(self.sites))
        messages = []
        for node_id in targets:
            train = node_id in train_ids
            content = RecordDict({rk.ARRAYS_KEY: arrays, rk.CONFIG_KEY: configs[train]})
            if train and secure is not None:
                for key, record in secure[node_id].items():
                    content[key] = record
            kind = MessageType.TRAIN if train else MessageType.EVALUATE
            messages.append(
                Message(
                    content,
                    dst_node_id=node_id,
                    message_type=kind,
                    group_id=str(round_number),
                    # An unanswered message expires with the round: a node that restarts
                    # later does not train a round that is over.
                    ttl=self.settings.round_timeout_s,
                )
            )
            self.folder.event(
                "sent",
                round=round_number,
                site=self.sites[node_id].name,
                kind="train" if train else "evaluate",
            )

        def on_reply(node_id: int, reply: Message) -> None:
            site = self.sites[node_id].name
            if reply.has_error():
                self.folder.event(
                    "failed", round=round_number, site=site, reason=reply.error.reason
                )
            else:
                self.folder.event("replied", round=round_number, site=site)

        counted = train_ids or set(targets)
        quorum = Quorum(
            counted, self.roster.quorum_size(len(counted)), self.settings.straggler_timeout_s
        )
        return self.channel(messages, self.settings.round_timeout_s, on_reply, quorum)

    def _record_evaluation(
        self, model_round: int, replies: Mapping[int, Message], *, final: bool = False
    ) -> None:
        record_evaluation(
            self.folder, self.settings.task, self.sites, model_round, replies, intervals=final
        )
        if self.tensorboard is not None:
            [entry] = [e for e in self.folder.results["rounds"] if e["round"] == model_round]
            self.tensorboard.log_round(entry)

    def _exclude(self, round_number: int, site: Site, reason: str) -> None:
        self.privacy.exclude(site.name, reason)
        logger.warning(
            "round %d: %s leaves training (its privacy policy refused): %s",
            round_number,
            site.name,
            reason,
        )
        self.folder.event("site_excluded", round=round_number, site=site.name, reason=reason)

    def _collect(
        self,
        round_number: int,
        weights: np.ndarray,
        replies: Mapping[int, Message],
        trainers: Sequence[Site],
        masked_size: int | None,
    ) -> tuple[dict[int, AcceptedUpdate], dict[str, str]]:
        """The trainers' checked updates by node, and why the others were left out."""
        accepted: dict[int, AcceptedUpdate] = {}
        rejected: dict[str, str] = {}
        for site in trainers:
            reply = replies.get(site.node_id)
            if reply is None:
                rejected[site.name] = self.channel.rejected.get(
                    site.node_id, "no reply before the round timeout"
                )
                continue
            if reply.has_error():
                reason = reply.error.reason or f"error {reply.error.code}"
                rejected[site.name] = reason
                if reply.error.code == ERROR_PRIVACY_BUDGET:
                    self._exclude(round_number, site, reason)
                continue
            try:
                accepted[site.node_id] = accept_update(
                    site,
                    reply,
                    weights,
                    self.privacy,
                    dp=self.settings.privacy.enabled,
                    masked_size=masked_size,
                )
            except (RecordFieldError, UpdateShapeError) as err:
                rejected[site.name] = f"update rejected: {err}"
                self.folder.event(
                    UPDATE_REJECTED, round=round_number, site=site.name, reason=str(err)
                )
        if masked_size is None and accepted:
            names = {site.node_id: site.name for site in trainers}
            norms = update_norms(weights, {names[n]: u.weights for n, u in accepted.items()})
            reasons = self.validator.rejections(norms)
            for node in list(accepted):
                update = accepted[node]
                update.info[UPDATE_NORM] = norms[names[node]]
                if names[node] not in reasons:
                    continue
                del accepted[node]
                rejected[names[node]] = f"update rejected: {reasons[names[node]]}"
                self.folder.event(
                    UPDATE_REJECTED,
                    round=round_number,
                    site=names[node],
                    reason=reasons[names[node]],
                )
                if update.privacy is not None:  # the site spent its budget all the same
                    self.folder.event(
                        PRIVACY_SPENT, round=round_number, site=names[node], **update.privacy
                    )
        for name, reason in rejected.items():
            logger.warning("round %d: %s left out: %s", round_number, name, reason)
            self.folder.event(SITE_LEFT_OUT, round=round_number, site=name, reason=reason)
        return accepted, rejected

    def _combine(
        self,
        round_number: int,
        weights: np.ndarray,
        accepted: Mapping[int, AcceptedUpdate],
        trainers: Sequence[Site],
        secure: SecureAggregator | None,
    ) -> tuple[np.ndarray, str | None, dict[str, object]]:
        """The next global model, why it equals the last one when it does, and what the
        strategy reports (e.g. which updates Krum kept)."""
        if secure is not None:
            try:
                mean = secure_average(secure, round_number, weights, accepted)
            except SecAggError as err:
                secure.fail(str(err))
                return weights, f"secure aggregation failed: {err}", {}
            return self.strategy.apply_mean(weights, mean), None, self._optimizer_report()
        names = {site.node_id: site.name for site in trainers}
        updates = [
            SiteUpdate(names[node], update.weights, update.examples)
            for node, update in accepted.items()
        ]
        if self.central is None:
            try:
                result = self.strategy.aggregate(weights, updates)
            except TooFewUpdatesError as err:
                return weights, str(err), {}
            return result.weights, None, {"kept": result.kept, **result.details}
        released = self.central.aggregate(
            round_number, weights, [u.weights for u in updates], asked=len(trainers)
        )
        self.privacy.central.update(self.central.spent())
        if released is None:
            return weights, self.central.last_refusal, {}
        return self.strategy.apply_mean(weights, released), None, self._optimizer_report()

    def _optimizer_report(self) -> dict[str, object]:
        optimizer = self.strategy.optimizer
        return {} if optimizer is None else {DETAIL_SERVER_STEP: optimizer.steps}

    def _aggregate(
        self,
        round_number: int,
        weights: np.ndarray,
        replies: Mapping[int, Message],
        trainers: Sequence[Site],
        secure: SecureAggregator | None = None,
        not_asked: Sequence[Site] = (),
    ) -> np.ndarray:
        masked_size = None if secure is None else secure.vector_size
        accepted, rejected = self._collect(round_number, weights, replies, trainers, masked_size)
        for site in not_asked:
            rejected[site.name] = self.capped.get(
                site.name, "could not take part in this round's secure aggregation"
            )
        # Sites whose privacy policy refused leave training; the quorum is of the others.
        answerable = [s for s in [*trainers, *not_asked] if s.name not in self.privacy.excluded]
        needed = self.roster.quorum_size(len(answerable)) if answerable else 0
        if len(accepted) < needed:
            raise QuorumLostError(
                f"round {round_number}: {len(accepted)} usable update(s) of the "
                f"{len(answerable)} training sites asked, the quorum needs {needed} "
                f"(quorum = {self.settings.quorum}); left out: "
                + "; ".join(f"{name}: {reason}" for name, reason in sorted(rejected.items()))
            )
        unchanged: str | None = None
        if not accepted:
            unchanged = (secure.failure if secure is not None else None) or "no usable update"
            if secure is not None:
                secure.fail(unchanged)
        new_weights = weights
        strategy_report: dict[str, object] = {}
        if accepted:
            new_weights, unchanged, strategy_report = self._combine(
                round_number, weights, accepted, trainers, secure
            )
        if unchanged is not None:
            logger.warning("round %d: model unchanged: %s", round_number, unchanged)
        names = {site.node_id: site.name for site in trainers}
        participants = sorted(names[node] for node in accepted)
        if secure is not None and unchanged is None:
            participants = sorted(names[node] for node in secure.active)
        checkpoint, digest = self.folder.checkpoint(
            round_number, self.layout.unflatten(new_weights)
        )
        for node, update in accepted.items():
            if update.privacy is not None:
                self.folder.event(
                    PRIVACY_SPENT, round=round_number, site=names[node], **update.privacy
                )
        self.folder.event(
            AGGREGATED,
            round=round_number,
            participants=participants,
            secure_aggregation=secure is not None,
            unchanged=unchanged,
        )
        self.folder.event(GLOBAL_MODEL, round=round_number, sha256=digest, checkpoint=checkpoint)
        self.folder.results["privacy"] = self.privacy.section()
        # Each site's privacy-ledger head as its reply carried it: per round, and the last
        # one per site for the provenance (the privacy audit checks ledgers against them).
        heads = {
            names[node]: u.ledger_head for node, u in accepted.items() if u.ledger_head is not None
        }
        self.folder.results.setdefault("ledger_heads", {}).update(heads)
        self.folder.update_round(
            round_number,
            participants=participants,
            train={names[node]: update.info for node, update in accepted.items()},
            left_out=rejected,
            total_examples=sum(update.examples for update in accepted.values()),
            checkpoint=checkpoint,
            model_sha256=digest,
            privacy={
                names[node]: u.privacy for node, u in accepted.items() if u.privacy is not None
            },
            ledger_heads=heads,
            secure_aggregation=None if secure is None else secure.summary(unchanged),
            strategy={"name": self.strategy.name, "unchanged": unchanged, **strategy_report},
        )
        if self.central is not None:
            self.folder.update_round(
                round_number,
                central_privacy={"released": unchanged is None, "reason": unchanged},
            )
        return new_weights

    def _too_few_trainers(self) -> str | None:
        eligible = self.privacy.eligible(
            site.name for site in self.sites.values() if site.role is Role.TRAIN
        )
        needed = self.settings.min_training_sites
        if len(eligible) >= needed:
            return None
        return (
            f"{len(eligible)} training site(s) left, fewer than min_training_sites={needed} "
            f"(left training: {', '.join(sorted(self.privacy.excluded)) or 'none'})"
        )

    def _secure_setup(
        self, round_number: int, trainers: Sequence[Site]
    ) -> dict[int, dict[str, ConfigRecord]] | None:
        """Under secure aggregation: the SecAgg+ records of each trainer's train message
        (a new session first when needed); None for a plain round. When too few sites can
        take part, the round trains nobody (an empty dict) and the model stays."""
        if self.secure is None or not self.secure_on:
            return None
        # Example counts bounded out of band (F5): a site over its roster cap sits out.
        self.capped = {}
        for site in trainers:
            reason = self.roster.example_cap_refusal(site)
            if reason is not None:
                self.capped[site.name] = reason
                logger.warning("round %d: %s left out: %s", round_number, site.name, reason)
                self.folder.event(SITE_LEFT_OUT, round=round_number, site=site.name, reason=reason)
        trainers = [site for site in trainers if site.name not in self.capped]
        if not trainers:
            return {}
        try:
            return self.secure.prepare(
                round_number,
                [site.node_id for site in trainers],
                weight_norm=float(max(site.num_train for site in trainers)),
            )
        except SecAggError as err:
            self.secure.fail(str(err))
            logger.warning("round %d: secure aggregation could not start: %s", round_number, err)
            self.folder.event("secure_aggregation_failed", round=round_number, reason=str(err))
            return {}

    def _decide_secure_aggregation(self) -> None:
        """Secure aggregation is decided once per run, from the training sites that
        joined, and never downgraded in a later round (a round that cannot aggregate
        securely fails instead)."""
        trainers = sum(site.role is Role.TRAIN for site in self.sites.values())
        # What counts is how many sites each round sums over (sites_per_round may sample).
        per_round = min(self.settings.sites_per_round or trainers, trainers)
        # With a roster of enough training sites the sites refuse plain updates (F6).
        self.secure_on = self.secure is not None and (
            self.settings.secure_aggregation_for(per_round) or secure_required(self.settings)
        )
        mode = self.settings.secure_aggregation.mode
        if self.secure_on:
            reason = f"mode {mode!r}, {per_round} training sites per round"
        elif mode != "off" and self.settings.central_privacy.enabled:
            reason = "central privacy clips each site's update at the server"
        elif mode != "off" and not self.settings.strategy.linear:
            reason = f"strategy {self.strategy.name!r} needs each site's update"
        elif mode == "off":
            reason = "mode 'off'"
        else:
            reason = f"{per_round} training site(s) per round, fewer than min_sites"
        logger.info("secure aggregation %s (%s)", "on" if self.secure_on else "off", reason)
        self.folder.results["secure_aggregation"] = {"enabled": self.secure_on, "reason": reason}
        self.folder.save()

    def _start(self) -> tuple[int, np.ndarray]:
        """The first round to run and the model it starts from: round 1 and the
        run-seeded initial model, or where a resumed run left off."""
        if self.resume_from is None:
            self._decide_secure_aggregation()
        else:
            self.secure_on = self.secure is not None and self.resume_from.secure_aggregation
        if self.settings.central_privacy.enabled:
            self.central = CentralPrivacy(
                self.settings.central_privacy,
                sites_per_round=len(self.roster.select_training_sites(1)),
                layout_size=self.layout.size,
            )
        if self.resume_from is not None:
            return self._resume(self.resume_from)
        weights = self.initial_weights
        checkpoint, digest = self.folder.checkpoint(0, self.layout.unflatten(weights))
        self.folder.event(GLOBAL_MODEL, round=0, sha256=digest, checkpoint=checkpoint)
        self.folder.update_round(0, checkpoint=checkpoint, model_sha256=digest)
        self._save_state(0, checkpoint, digest)
        return 1, weights

    def _save_state(self, round_number: int, checkpoint: str, digest: str) -> None:
        """Everything a resumed run needs after `round_number` (checkpoints/state.json)."""
        strategy_file = f"checkpoints/strategy-{round_number:03d}.npz"
        strategy_digest = save_strategy_state(
            self.folder.path / strategy_file, self.strategy.state_dict()
        )
        RunState(
            round=round_number,
            model_checkpoint=checkpoint,
            model_sha256=digest,
            strategy_file=strategy_file,
            strategy_sha256=strategy_digest,
            privacy=self.privacy.state_dict(),
            central_privacy=None if self.central is None else self.central.state(),
            secure_aggregation=self.secure_on,
            audit_head=self.folder.audit.head,
            config_hash=self.identity.config_hash,
        ).save(self.folder.path)
        previous = self.folder.path / f"checkpoints/strategy-{round_number - 1:03d}.npz"
        previous.unlink(missing_ok=True)

    def _resume(self, state: RunState) -> tuple[int, np.ndarray]:
        path = self.folder.path
        model = torch.load(path / state.model_checkpoint, map_location="cpu", weights_only=True)
        weights = self.layout.flatten(model)
        try:
            self.strategy.load_state_dict(
                load_strategy_state(path / state.strategy_file), vector_size=self.layout.size
            )
            self.privacy.load_state_dict(state.privacy)
            if self.central is not None and state.central_privacy is not None:
                self.central.restore(state.central_privacy)
        except (ValueError, StrategyStateError) as err:
            raise FederationError(f"cannot resume: {err}") from None
        if state.audit_head not in audit_hashes(self.folder.audit.path):
            raise FederationError(
                "cannot resume: the audit log no longer holds the record the checkpoint "
                "names (it was truncated or replaced)"
            )
        dropped = [e["round"] for e in self.folder.results["rounds"] if e["round"] > state.round]
        self.folder.results["rounds"] = [
            e for e in self.folder.results["rounds"] if e["round"] <= state.round
        ]
        self.folder.results["privacy"] = self.privacy.section()
        logger.info("resuming after round %d (unfinished round(s) %s redone)", state.round, dropped)
        self.folder.event(
            RUN_RESUMED,
            from_round=state.round + 1,
            checkpoint_head=state.audit_head,
            model_sha256=state.model_sha256,
            redone_rounds=dropped,
        )
        self.folder.save()
        return state.round + 1, weights

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
        records = self._secure_setup(round_number, trainers)
        secure = None if records is None else self.secure
        asked = trainers if records is None else [s for s in trainers if s.node_id in records]
        replies = self._wave(
            round_number,
            weights,
            asked,
            records,
            weight_norm=0.0 if secure is None else secure.weight_norm,
            online=online,
        )
        self._record_evaluation(round_number - 1, replies)
        weights = self._aggregate(
            round_number,
            weights,
            replies,
            asked,
            secure,
            not_asked=[site for site in trainers if site not in asked],
        )
        duration = time.monotonic() - started
        self.folder.update_round(
            round_number,
            duration_s=round(duration, 3),
            upload_bytes=self.channel.upload_bytes[round_number],
            not_connected=offline,
        )
        self.folder.event("round_done", round=round_number, duration_s=duration)
        return weights

    def run(self) -> np.ndarray:
        """Discover sites, run every round, evaluate the final model; returns its weights.
        When a round's quorum cannot be met the run stops (`stopped` says why) with its
        state saved after the last completed round, to resume from later."""
        self.roster.discover_sites()
        first_round, weights = self._start()
        for round_number in range(first_round, self.settings.rounds + 1):
            self.ended_early = self._too_few_trainers()
            if self.ended_early is not None:
                logger.warning("training ends before round %d: %s", round_number, self.ended_early)
                self.folder.results["ended_early"] = self.ended_early
                self.folder.event("ended_early", round=round_number, reason=self.ended_early)
                break
            try:
                weights = self._round(round_number, weights)
            except QuorumLostError as err:
                self.stopped = str(err)
                logger.error("run stops: %s", err)
                self.folder.results["stopped"] = {"round": round_number, "reason": str(err)}
                self.folder.event(RUN_STOPPED, round=round_number, reason=str(err))
                self.folder.save()
                return weights
            checkpoint = self.folder.results["rounds"][-1]
            self._save_state(round_number, checkpoint["checkpoint"], checkpoint["model_sha256"])
        last_round = max((entry["round"] for entry in self.folder.results["rounds"]), default=0)
        online = self.roster.online(self.settings.rounds + 1)
        final = self._wave(self.settings.rounds + 1, weights, trainers=(), online=online)
        self._record_evaluation(last_round, final, final=True)
        store_saliency(self.folder, self.sites, final)
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.folder.results["node_audit_heads"] = dict(self.channel.node_audit_heads)
        self.folder.save()
        return weights
