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
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from consortia.common import records as rk
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
from consortia.common.settings import Role, RunSettings
from consortia.common.weights import WeightLayout
from consortia.server.aggregation import UpdateShapeError, weighted_average
from consortia.server.central_privacy import CentralPrivacy
from consortia.server.evaluation import pooled_metrics, site_metrics
from consortia.server.messaging import exchange
from consortia.server.run_folder import RunFolder
from consortia.server.run_privacy import RunPrivacy
from consortia.server.sites import Site, site_from_reply
from consortia.server.updates import accept_update

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
        poll_interval_s: float = 0.05,
    ) -> None:
        self.grid = grid
        self.settings = settings
        self.folder = folder
        self.poll_interval_s = poll_interval_s
        self.sites: dict[int, Site] = {}
        self.model_settings = settings.model.to_model_settings()
        model = build_model(self.model_settings)
        self.layout = WeightLayout.of(model.state_dict())
        self.layout_fingerprint = self.layout.fingerprint()
        self.initial_weights = self.layout.flatten(model.state_dict())
        self.privacy = RunPrivacy(settings)
        self.central: CentralPrivacy | None = None
        self.ended_early: str | None = None

    # -- messaging -------------------------------------------------------------------------

    def exchange(
        self,
        messages: Sequence[Message],
        timeout_s: float,
        on_reply: Callable[[int, Message], None] | None = None,
    ) -> dict[int, Message]:
        """Push `messages`, pull replies as they arrive until all came or `timeout_s`."""
        return exchange(
            self.grid,
            messages,
            timeout_s,
            poll_interval_s=self.poll_interval_s,
            on_reply=on_reply,
        )

    def _instruction(self, round_number: int, *, train: bool) -> Instruction:
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
            {rk.CFG_TASK: self.settings.task.value, rk.CFG_DATASET: self.settings.dataset}
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
        names: set[str] = set()
        for node_id, reply in sorted(replies.items()):
            if reply.has_error():
                self.folder.event("site_refused", node_id=node_id, reason=reply.error.reason)
                logger.warning("node %d left out: %s", node_id, reply.error.reason)
                continue
            try:
                site, site_privacy = site_from_reply(node_id, reply)
            except (RecordFieldError, ValueError) as err:
                self.folder.event("site_refused", node_id=node_id, reason=str(err))
                logger.warning("node %d left out: malformed answer: %s", node_id, err)
                continue
            if site.name in names:
                self.folder.event("site_refused", node_id=node_id, reason="duplicate site name")
                logger.warning("node %d left out: duplicate site name %s", node_id, site.name)
                continue
            names.add(site.name)
            self.sites[node_id] = site
            if site.role is Role.TRAIN:
                self.privacy.add_site(site.name, site_privacy)
            self.folder.event("site_joined", site=site.name, role=site.role.value)
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
        self, round_number: int, weights: np.ndarray, trainers: Iterable[Site]
    ) -> dict[int, Message]:
        arrays = _to_record(weights)
        configs = {
            train: self._instruction(round_number, train=train).to_config()
            for train in (True, False)
        }
        train_ids = {site.node_id for site in trainers}
        messages = []
        for node_id in sorted(self.sites):
            train = node_id in train_ids
            content = RecordDict({rk.ARRAYS_KEY: arrays, rk.CONFIG_KEY: configs[train]})
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

    def _aggregate(
        self,
        round_number: int,
        weights: np.ndarray,
        replies: Mapping[int, Message],
        trainers: Sequence[Site],
    ) -> np.ndarray:
        updates: list[tuple[np.ndarray, float]] = []
        train_info: dict[str, dict[str, float]] = {}
        privacy: dict[str, dict[str, Any]] = {}
        rejected: dict[str, str] = {}
        for site in trainers:
            reply = replies.get(site.node_id)
            if reply is None:
                rejected[site.name] = "no reply before the round timeout"
                continue
            if reply.has_error():
                reason = reply.error.reason or f"error {reply.error.code}"
                rejected[site.name] = reason
                if reply.error.code == ERROR_PRIVACY_BUDGET:
                    self._exclude(round_number, site, reason)
                continue
            try:
                accepted = accept_update(
                    site, reply, weights, self.privacy, dp=self.settings.privacy.enabled
                )
            except (RecordFieldError, UpdateShapeError) as err:
                rejected[site.name] = f"update rejected: {err}"
                continue
            updates.append((accepted.weights, accepted.examples))
            train_info[site.name] = accepted.info
            if accepted.privacy is not None:
                privacy[site.name] = accepted.privacy
        for name, reason in rejected.items():
            logger.warning("round %d: %s left out: %s", round_number, name, reason)
        refused_all = bool(trainers) and all(s.name in self.privacy.excluded for s in trainers)
        if not updates and not refused_all:
            raise FederationError(f"round {round_number}: no usable update ({rejected})")
        central_refused = None
        if not updates:
            new_weights = weights
        elif self.central is None:
            new_weights = weighted_average(updates)
        else:
            released = self.central.aggregate(
                round_number, weights, [u for u, _ in updates], asked=len(trainers)
            )
            central_refused = None if released is not None else self.central.last_refusal
            new_weights = weights if released is None else released
            self.privacy.central.update(self.central.spent())
        if central_refused is not None:
            logger.warning("round %d: model unchanged: %s", round_number, central_refused)
        checkpoint = self.folder.checkpoint(round_number, self.layout.unflatten(new_weights))
        self.folder.results["privacy"] = self.privacy.section()
        self.folder.update_round(
            round_number,
            participants=sorted(train_info),
            train=train_info,
            left_out=rejected,
            total_examples=sum(c for _, c in updates),
            checkpoint=checkpoint,
            privacy=privacy,
        )
        if self.central is not None:
            self.folder.update_round(
                round_number,
                central_privacy={"released": central_refused is None, "reason": central_refused},
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

    def run(self) -> np.ndarray:
        """Discover sites, run every round, evaluate the final model; returns its weights."""
        self.discover_sites()
        if self.settings.central_privacy.enabled:
            self.central = CentralPrivacy(
                self.settings.central_privacy,
                sites_per_round=len(self.select_training_sites(1)),
                layout_size=self.layout.size,
            )
        weights = self.initial_weights
        self.folder.checkpoint(0, self.layout.unflatten(weights))
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
            replies = self._wave(round_number, weights, trainers)
            self._record_evaluation(round_number - 1, replies)
            weights = self._aggregate(round_number, weights, replies, trainers)
            duration = time.monotonic() - started
            self.folder.update_round(round_number, duration_s=round(duration, 3))
            self.folder.event("round_done", round=round_number, duration_s=duration)
        last_round = max((entry["round"] for entry in self.folder.results["rounds"]), default=0)
        final = self._wave(self.settings.rounds + 1, weights, trainers=())
        self._record_evaluation(last_round, final)
        return weights
