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
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from consortia.common import records as rk
from consortia.common.audit_log import (
    AGGREGATED,
    GLOBAL_MODEL,
    PRIVACY_SPENT,
    SITE_JOINED,
    SITE_REFUSED,
)
from consortia.common.errors import ConsortiaError
from consortia.common.instructions import Instruction
from consortia.common.models import build_model
from consortia.common.record_fields import (
    RecordFieldError,
    get_metric_record,
    metric_floats,
    metric_lists,
)
from consortia.common.records import ERROR_PRIVACY_BUDGET
from consortia.common.run_identity import RunIdentity
from consortia.common.secagg_config import SecAggError
from consortia.common.settings import Role, RunSettings
from consortia.common.weights import WeightLayout
from consortia.server.aggregation import UpdateShapeError, weighted_average
from consortia.server.central_privacy import CentralPrivacy
from consortia.server.evaluation import pooled_metrics, site_metrics
from consortia.server.reply_verifier import ReplyVerifier, signer_of
from consortia.server.run_folder import RunFolder
from consortia.server.run_privacy import RunPrivacy
from consortia.server.secure_round import SecureAggregator, secure_average
from consortia.server.sites import Site, site_from_reply
from consortia.server.updates import AcceptedUpdate, accept_update
from consortia.server.verified_exchange import VerifiedExchange

__all__ = ["Federation", "FederationError", "Site"]

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
    ) -> None:
        self.grid = grid
        self.settings = settings
        self.folder = folder
        self.identity = identity or RunIdentity.of(settings)
        self.channel = VerifiedExchange(
            grid, folder, verifier or ReplyVerifier(None, 0), poll_interval_s=poll_interval_s
        )
        self.sites: dict[int, Site] = {}
        self.model_settings = settings.model.to_model_settings()
        with torch.random.fork_rng():
            torch.manual_seed(settings.seed)  # the run's seed fixes the initial model too
            model = build_model(self.model_settings)
        self.layout = WeightLayout.of(model.state_dict())
        self.layout_fingerprint = self.layout.fingerprint()
        self.initial_weights = self.layout.flatten(model.state_dict())
        self.privacy = RunPrivacy(settings)
        self.central: CentralPrivacy | None = None
        self.secure: SecureAggregator | None = None
        self.secure_on = False  # decided once, from the training sites that joined
        if settings.secure_aggregation.mode != "off":
            stage_timeout = settings.secure_aggregation.stage_timeout_s
            self.secure = SecureAggregator(
                settings.secure_aggregation,
                self.layout.size + 1,
                lambda messages: self.exchange(messages, stage_timeout),
            )
        self.ended_early: str | None = None

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
        )

    # -- discovery -------------------------------------------------------------------------

    def wait_for_nodes(self) -> list[int]:
        """Node ids once `min_sites` nodes are connected; error after `connect_timeout_s`."""
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while True:
            node_ids = sorted(self.grid.get_node_ids())
            if len(node_ids) >= self.settings.min_sites:
                return node_ids
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(node_ids)} of min_sites={self.settings.min_sites} sites "
                    f"connected within {self.settings.connect_timeout_s:.0f} s"
                )
            time.sleep(0.2)

    def discover_sites(self) -> list[Site]:
        """Ask every connected node who it is; keep the ones whose data fit the task."""
        node_ids = self.wait_for_nodes()
        config = ConfigRecord(
            {
                rk.CFG_TASK: self.settings.task.value,
                rk.CFG_DATASET: self.settings.dataset,
                rk.CFG_APP_HASH: self.identity.app_hash,
            }
        )
        messages = [
            Message(
                RecordDict({rk.CONFIG_KEY: config}),
                dst_node_id=node_id,
                message_type=MessageType.QUERY,
                group_id="discover",
            )
            for node_id in node_ids
        ]
        replies = self.exchange(messages, self.settings.connect_timeout_s)
        for node_id, reason in self.channel.rejected.items():
            self.folder.event(SITE_REFUSED, node_id=node_id, reason=reason)
        names: set[str] = set()
        for node_id, reply in sorted(replies.items()):
            if reply.has_error():
                self.folder.event(SITE_REFUSED, node_id=node_id, reason=reply.error.reason)
                logger.warning("node %d left out: %s", node_id, reply.error.reason)
                continue
            try:
                site, site_privacy = site_from_reply(node_id, reply)
            except (RecordFieldError, ValueError) as err:
                self.folder.event(SITE_REFUSED, node_id=node_id, reason=str(err))
                logger.warning("node %d left out: malformed answer: %s", node_id, err)
                continue
            signer = signer_of(reply)
            if self.channel.verifier.enabled and signer != site.name:
                reason = f"answers as site {site.name!r} but signed as {signer!r}"
                self.folder.event(SITE_REFUSED, node_id=node_id, reason=reason)
                logger.warning("node %d left out: %s", node_id, reason)
                continue
            if site.name in names:
                self.folder.event(SITE_REFUSED, node_id=node_id, reason="duplicate site name")
                logger.warning("node %d left out: duplicate site name %s", node_id, site.name)
                continue
            names.add(site.name)
            self.sites[node_id] = site
            self.channel.names[node_id] = site.name
            if site.role is Role.TRAIN:
                self.privacy.add_site(site.name, site_privacy)
            self.folder.event(
                SITE_JOINED,
                site=site.name,
                role=site.role.value,
                node_id=node_id,
                dataset_fingerprint=site.data_fingerprint,
            )
        if not any(site.role is Role.TRAIN for site in self.sites.values()):
            raise FederationError("no training site answered; nothing to train")
        self.folder.results["sites"] = [
            asdict(site) | {"role": site.role.value} for site in self.sites.values()
        ]
        self.folder.results["privacy"] = self.privacy.section()
        self.folder.save()
        return list(self.sites.values())

    # -- rounds ----------------------------------------------------------------------------

    def select_training_sites(self, round_number: int) -> list[Site]:
        trainers = sorted(
            (
                s
                for s in self.sites.values()
                if s.role is Role.TRAIN and s.name not in self.privacy.excluded
            ),
            key=lambda s: s.name,
        )
        k = self.settings.sites_per_round or len(trainers)
        if k >= len(trainers):
            return trainers
        rng = random.Random(self.settings.seed * 100_003 + round_number)
        return sorted(rng.sample(trainers, k), key=lambda s: s.name)

    def _wave(
        self,
        round_number: int,
        weights: np.ndarray,
        trainers: Iterable[Site],
        secure: Mapping[int, Mapping[str, ConfigRecord]] | None = None,
        weight_norm: float = 0.0,
    ) -> dict[int, Message]:
        """Train messages to `trainers`, evaluate messages to every other site; under
        secure aggregation each trainer's message carries its SecAgg+ records."""
        arrays = _to_record(weights)
        configs = {
            train: self._instruction(
                round_number, train=train, secure=secure is not None, weight_norm=weight_norm
            ).to_config()
            for train in (True, False)
        }
        train_ids = {site.node_id for site in trainers}
        messages = []
        for node_id in sorted(self.sites):
            train = node_id in train_ids
            content = RecordDict({rk.ARRAYS_KEY: arrays, rk.CONFIG_KEY: configs[train]})
            if train and secure is not None:
                for key, record in secure[node_id].items():
                    content[key] = record
            kind = MessageType.TRAIN if train else MessageType.EVALUATE
            messages.append(
                Message(content, dst_node_id=node_id, message_type=kind, group_id=str(round_number))
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

        return self.exchange(messages, self.settings.round_timeout_s, on_reply)

    def _record_evaluation(self, model_round: int, replies: Mapping[int, Message]) -> None:
        per_site: dict[str, dict[str, float]] = {}
        summaries: dict[str, tuple[dict[str, float], dict[str, list[float]]]] = {}
        for node_id, reply in replies.items():
            if reply.has_error() or rk.EVAL_METRICS_KEY not in reply.content:
                continue
            name = self.sites[node_id].name
            try:
                sums = metric_floats(get_metric_record(reply.content, rk.EVAL_METRICS_KEY))
                hists: dict[str, list[float]] = {}
                if rk.EVAL_HIST_KEY in reply.content:
                    hists = metric_lists(get_metric_record(reply.content, rk.EVAL_HIST_KEY))
            except RecordFieldError as err:
                logger.warning("evaluation of %s ignored: %s", name, err)
                continue
            summaries[name] = (sums, hists)
            per_site[name] = site_metrics(self.settings.task, sums, hists)
        roles = {site.name: site.role for site in self.sites.values()}
        holdout = [summaries[n] for n in summaries if roles[n] is Role.HOLDOUT]
        training = [summaries[n] for n in summaries if roles[n] is Role.TRAIN]
        evaluation = {
            "sites": per_site,
            "holdout": pooled_metrics(self.settings.task, holdout) if holdout else None,
            "training_sites": pooled_metrics(self.settings.task, training) if training else None,
        }
        self.folder.update_round(model_round, evaluation=evaluation)
        for scope in ("holdout", "training_sites"):
            pooled = evaluation[scope]
            if isinstance(pooled, dict):
                shown = ", ".join(f"{k} {v:.4f}" for k, v in pooled.items() if k != "cases")
                logger.info("model after round %d, %s: %s", model_round, scope, shown)
        self.folder.event(
            "evaluated", round=model_round, holdout=evaluation["holdout"], sites=per_site
        )

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
        for name, reason in rejected.items():
            logger.warning("round %d: %s left out: %s", round_number, name, reason)
        return accepted, rejected

    def _combine(
        self,
        round_number: int,
        weights: np.ndarray,
        accepted: Mapping[int, AcceptedUpdate],
        trainers: Sequence[Site],
        secure: SecureAggregator | None,
    ) -> tuple[np.ndarray, str | None]:
        """The next global model, and why it equals the last one when it does."""
        updates = [(update.weights, update.examples) for update in accepted.values()]
        if secure is not None:
            try:
                return secure_average(secure, round_number, weights, accepted), None
            except SecAggError as err:
                secure.fail(str(err))
                return weights, f"secure aggregation failed: {err}"
        if self.central is None:
            return weighted_average(updates), None
        released = self.central.aggregate(
            round_number, weights, [u for u, _ in updates], asked=len(trainers)
        )
        self.privacy.central.update(self.central.spent())
        if released is None:
            return weights, self.central.last_refusal
        return released, None

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
            rejected[site.name] = "could not take part in this round's secure aggregation"
        refused_all = bool(trainers) and all(s.name in self.privacy.excluded for s in trainers)
        if not accepted and not refused_all and secure is None:
            raise FederationError(f"round {round_number}: no usable update ({rejected})")
        unchanged: str | None = None
        if not accepted:
            unchanged = (secure.failure if secure is not None else None) or "no usable update"
            if secure is not None:
                secure.fail(unchanged)
        new_weights = weights
        if accepted:
            new_weights, unchanged = self._combine(
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
            secure_aggregation=None if secure is None else secure.summary(unchanged),
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
        self.secure_on = self.secure is not None and self.settings.secure_aggregation_for(per_round)
        mode = self.settings.secure_aggregation.mode
        if self.secure_on:
            reason = f"mode {mode!r}, {per_round} training sites per round"
        elif mode != "off" and self.settings.central_privacy.enabled:
            reason = "central privacy clips each site's update at the server"
        elif mode == "off":
            reason = "mode 'off'"
        else:
            reason = f"{per_round} training site(s) per round, fewer than min_sites"
        logger.info("secure aggregation %s (%s)", "on" if self.secure_on else "off", reason)
        self.folder.results["secure_aggregation"] = {"enabled": self.secure_on, "reason": reason}
        self.folder.save()

    def run(self) -> np.ndarray:
        """Discover sites, run every round, evaluate the final model; returns its weights."""
        self.discover_sites()
        self._decide_secure_aggregation()
        if self.settings.central_privacy.enabled:
            self.central = CentralPrivacy(
                self.settings.central_privacy,
                sites_per_round=len(self.select_training_sites(1)),
                layout_size=self.layout.size,
            )
        weights = self.initial_weights
        checkpoint, digest = self.folder.checkpoint(0, self.layout.unflatten(weights))
        self.folder.event(GLOBAL_MODEL, round=0, sha256=digest, checkpoint=checkpoint)
        self.folder.update_round(0, checkpoint=checkpoint, model_sha256=digest)
        for round_number in range(1, self.settings.rounds + 1):
            self.ended_early = self._too_few_trainers()
            if self.ended_early is not None:
                logger.warning("training ends before round %d: %s", round_number, self.ended_early)
                self.folder.results["ended_early"] = self.ended_early
                self.folder.event("ended_early", round=round_number, reason=self.ended_early)
                break
            started = time.monotonic()
            trainers = self.select_training_sites(round_number)
            logger.info(
                "round %d/%d: training at %s",
                round_number,
                self.settings.rounds,
                ", ".join(s.name for s in trainers),
            )
            self.folder.event(
                "round_started", round=round_number, trainers=[s.name for s in trainers]
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
            )
            self.folder.event("round_done", round=round_number, duration_s=duration)
        last_round = max((entry["round"] for entry in self.folder.results["rounds"]), default=0)
        final = self._wave(self.settings.rounds + 1, weights, trainers=())
        self._record_evaluation(last_round, final)
        self.folder.results["node_audit_heads"] = dict(self.channel.node_audit_heads)
        self.folder.save()
        return weights
