"""The node's privacy gate: plan a round's DP-SGD within the site's policy, refuse a
round that would break it, and record what was spent in the data set's ledger.

`PrivacyBudget` is what a train handler uses: opened with the ledger locked
(`PrivacyBudget.locked`), it answers a round already released in this run with its kept
release (`kept`), plans a new one (`plan`, which runs `plan_round` before any training)
and, after DP training, commits it (`commit`: `record_round`, the kept release and the
node's audit record). The update leaves the site only after the ledger entry is on
disk: a crash can over-count spending, never under-count it.

A run's privacy target is the site's, not the server's: it is keyed on the hash of the
run config the site approved (which fixes `rounds`, the DP settings and the target), not
on the run id the server chooses. Every round trained under that config, in any run,
counts against the epsilon the config was approved at: `target_epsilon`, or with a fixed
noise multiplier the epsilon of `rounds` rounds at it. A round number outside
1..`rounds` is refused, with or without DP.

`open_ledger` cross-checks the ledger against the node's own hash-chained audit log,
which records every DP round (`privacy_spent`, with the data set's fingerprint and
epsilon): a ledger that is missing, has fewer entries, or a lower epsilon than the log
records was deleted, truncated or replaced, and the node refuses to train on the data set
(`LedgerError`, naming the ledger and the problem) instead of starting afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord

from consortia.client.node.audit import node_audit_for, recorded_spending
from consortia.client.privacy.dp_training import DPRound
from consortia.client.release_cache import RELEASES_DIR, Release, ReleaseCache, kept_release
from consortia.common.audit.log import AUDIT_LOG_FILE, PRIVACY_SPENT, AuditLogError
from consortia.common.config.privacy_settings import (
    Accountant,
    PrivacyPolicy,
    SamplePrivacySettings,
)
from consortia.common.config.settings import RunSettings, SiteSettings
from consortia.common.errors import ConsortiaError
from consortia.common.logs import utc_now
from consortia.common.privacy.accounting import (
    HistoryEntry,
    PoissonPlan,
    epsilon_of,
    noise_for_target,
    poisson_plan,
)
from consortia.common.privacy.ledger import (
    LedgerEntry,
    LedgerError,
    LedgerHead,
    PrivacyLedger,
    ledger_lock,
    ledger_path,
)
from consortia.common.privacy.planner import learning_refusal
from consortia.common.privacy.spend import PrivacySpend
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.run_identity import config_hash

__all__ = [
    "PrivacyBudget",
    "PrivacyRefusedError",
    "RoundRequest",
    "open_ledger",
    "plan_round",
    "record_round",
    "round_request",
]

logger = logging.getLogger("consortia.client")

# Opacus' noise search stops within 1% of the target epsilon.
_TARGET_TOLERANCE = 1.01
# The ledger and the audit log store the same float; this only absorbs rounding.
_EPSILON_SLACK = 1e-9


class PrivacyRefusedError(ConsortiaError):
    """The site's policy forbids this round; the message says why (sent to the server)."""


@dataclass(frozen=True)
class RoundRequest:
    """What the server asks of one round, as far as privacy goes."""

    run_id: str
    # SHA-256 of the approved run config (`consortia.common.wire.run_identity.config_hash`).
    config_hash: str
    round: int
    total_rounds: int
    local_epochs: int
    batch_size: int
    privacy: SamplePrivacySettings


def round_request(instruction: Instruction, settings: RunSettings) -> RoundRequest:
    """The privacy side of a train instruction, keyed on the hash of the approved run
    settings Flower carries (`RUN_CONFIG_SETTINGS`: the config the approval mod checked,
    parsed once by the handler), not on the run id the server chose."""
    return RoundRequest(
        run_id=instruction.run_id,
        config_hash=config_hash(settings),
        round=instruction.round,
        total_rounds=instruction.total_rounds,
        local_epochs=instruction.local_epochs,
        batch_size=instruction.batch_size,
        privacy=instruction.privacy,
    )


def open_ledger(path: Path, dataset_fingerprint: str, site: SiteSettings) -> PrivacyLedger:
    """The data set's ledger (empty if it never trained), cross-checked against the node's
    audit log. Raises `LedgerError` naming the ledger when the log records DP rounds on
    this data set that the ledger lacks: the file missing, fewer entries than
    `privacy_spent` records, or a lower epsilon than the last of them. The ledger is
    written before its audit record, so a crash leaves the ledger ahead, never behind."""
    audit = site.state_path / AUDIT_LOG_FILE
    try:
        recorded = recorded_spending(site, dataset_fingerprint)
    except AuditLogError as err:
        raise LedgerError(
            f"{path}: cannot cross-check the ledger against the node's audit log: {err}"
        ) from None
    if recorded.rounds == 0:
        return PrivacyLedger.open(path, dataset_fingerprint, site.site.name)
    what = (
        f"the node's audit log {audit} records {recorded.rounds} DP round"
        f"{'s' if recorded.rounds != 1 else ''} on this data set, the last (record "
        f"{recorded.last_seq}) at epsilon {recorded.epsilon:.6g}"
    )
    advice = (
        "restore the ledger from a backup; the node trains no more on this data set until "
        "its ledger holds every recorded round"
    )
    if not path.exists():
        raise LedgerError(f"{path}: the ledger is missing (deleted or moved) but {what}; {advice}")
    ledger = PrivacyLedger.load(path, dataset_fingerprint=dataset_fingerprint)
    entries = ledger.entries
    if len(entries) < recorded.rounds:
        raise LedgerError(
            f"{path}: the ledger has {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} "
            f"but {what}: it was truncated or replaced; {advice}"
        )
    epsilon = entries[-1].epsilon
    if epsilon < recorded.epsilon - _EPSILON_SLACK * max(1.0, recorded.epsilon):
        raise LedgerError(
            f"{path}: the ledger's epsilon {epsilon:.6g} is lower than recorded: {what}; "
            f"it was rewritten; {advice}"
        )
    return ledger


def _check_policy(
    policy: PrivacyPolicy, settings: SamplePrivacySettings, num_examples: int
) -> None:
    """Refuse DP settings the site's policy forbids whatever the noise."""
    if policy.delta >= 1.0 / num_examples:
        raise PrivacyRefusedError(
            f"the site's delta {policy.delta:g} is not below 1/N = {1.0 / num_examples:g} "
            "for its training examples; lower [privacy].delta"
        )
    if settings.max_grad_norm > policy.max_grad_norm:
        raise PrivacyRefusedError(
            f"clipping norm {settings.max_grad_norm:g} exceeds the site's maximum "
            f"{policy.max_grad_norm:g}"
        )


def _noise(
    policy: PrivacyPolicy, request: RoundRequest, plan: PoissonPlan, num_examples: int
) -> float:
    """The round's noise multiplier (fixed, or what reaches the target epsilon over the
    approved rounds); refused below the site's minimum or unlikely to learn."""
    settings = request.privacy
    if settings.noise_multiplier is not None:
        sigma = settings.noise_multiplier
    else:
        target = float(settings.target_epsilon or 0.0)
        planned = plan.steps(request.local_epochs) * request.total_rounds
        try:
            sigma = noise_for_target(
                target, policy.delta, plan.sample_rate, planned, settings.accountant
            )
        except ValueError as err:
            raise PrivacyRefusedError(f"no noise level reaches epsilon {target:g}: {err}") from None
    if sigma < policy.min_noise_multiplier:
        raise PrivacyRefusedError(
            f"noise multiplier {sigma:.3f} is below the site's minimum "
            f"{policy.min_noise_multiplier:g}"
        )
    refusal = learning_refusal(
        policy, sigma, plan.sample_rate, num_examples, settings.max_grad_norm
    )
    if refusal is not None:  # [privacy] refuse_if_unlikely_to_learn: the planner's judgement
        raise PrivacyRefusedError(refusal)
    return sigma


def _check_site_limit(
    policy: PrivacyPolicy,
    accountant: Accountant,
    history: list[HistoryEntry],
    step: HistoryEntry,
) -> None:
    """Refuse a round that would bring the data set over the site's epsilon limit."""
    projected = epsilon_of([*history, step], policy.delta, accountant)
    if projected > policy.max_epsilon:
        spent = epsilon_of(history, policy.delta, accountant)
        raise PrivacyRefusedError(
            f"privacy budget: this round would bring the data set's epsilon from "
            f"{spent:.3f} to {projected:.3f}, over the site's limit {policy.max_epsilon:g} "
            f"(delta {policy.delta:g})"
        )


def _check_run_target(
    policy: PrivacyPolicy,
    ledger: PrivacyLedger,
    request: RoundRequest,
    step: HistoryEntry,
) -> None:
    """Refuse a round that would bring the approved run config (all its runs) over the
    epsilon it was approved at."""
    settings = request.privacy
    if settings.target_epsilon is not None:
        approved = settings.target_epsilon
    else:  # a fixed noise multiplier: the epsilon of the approved number of rounds
        sigma, sample_rate, steps = step
        whole_run = [(sigma, sample_rate, steps * request.total_rounds)]
        approved = epsilon_of(whole_run, policy.delta, settings.accountant)
    try:
        config_history = ledger.config_history(request.config_hash, request.run_id)
    except LedgerError as err:
        raise PrivacyRefusedError(f"cannot key the run's privacy target: {err}") from None
    run_projected = epsilon_of([*config_history, step], policy.delta, settings.accountant)
    if run_projected > approved * _TARGET_TOLERANCE:
        raise PrivacyRefusedError(
            f"this round would bring the epsilon spent under the approved run config "
            f"{request.config_hash[:12]} (all its runs) to {run_projected:.3f}, over the "
            f"run's target {approved:.3g}"
        )


def plan_round(
    policy: PrivacyPolicy, ledger: PrivacyLedger, request: RoundRequest, num_examples: int
) -> DPRound | None:
    """The DP-SGD parameters of this round, or None for a non-private round the policy
    allows. Raises `PrivacyRefusedError` when the round would break the site's policy."""
    if not 1 <= request.round <= request.total_rounds:
        raise PrivacyRefusedError(
            f"round {request.round} is outside the approved run's rounds "
            f"1..{request.total_rounds}; the site trains no extra rounds"
        )
    settings = request.privacy
    if not settings.enabled:
        if not policy.allow_non_private:
            raise PrivacyRefusedError("this site trains only with differential privacy (DP-SGD)")
        return None
    _check_policy(policy, settings, num_examples)
    plan = poisson_plan(num_examples, settings.recipe.logical_batch_size(request.batch_size))
    sigma = _noise(policy, request, plan, num_examples)
    history = ledger.history()
    step = (sigma, plan.sample_rate, plan.steps(request.local_epochs))
    _check_site_limit(policy, settings.accountant, history, step)
    _check_run_target(policy, ledger, request, step)
    return DPRound(
        noise_multiplier=sigma,
        max_grad_norm=settings.max_grad_norm,
        delta=policy.delta,
        accountant=settings.accountant,
        history=tuple(history),
        run_history=tuple(ledger.history(request.run_id)),
        recipe=settings.recipe,
    )


def record_round(
    ledger: PrivacyLedger,
    path: Path,
    request: RoundRequest,
    spend: PrivacySpend,
    num_examples: int,
) -> LedgerEntry:
    """Append the round to the ledger and write it (atomically) before the update leaves.
    The entry's `run_epsilon` covers this run's rounds in the ledger and this one."""
    run_epsilon = epsilon_of(
        [*ledger.history(request.run_id), spend.history_entry()], spend.delta, spend.accountant
    )
    entry = LedgerEntry(
        **spend.spend().model_dump(exclude={"run_epsilon"}),
        run_epsilon=run_epsilon,
        run_id=request.run_id,
        round=request.round,
        num_examples=num_examples,
        recorded_at=utc_now(),
        config_hash=request.config_hash,
    )
    ledger.append(entry)
    ledger.save(path)
    return entry


class PrivacyBudget:
    """One round's privacy at this site: the data set's ledger (locked and cross-checked
    against the node's audit log, `locked`) and the run's kept release.

    Before training: `kept` (a round already released in this run is sent again, at no
    cost) and `plan` (the DP-SGD parameters, or `PrivacyRefusedError` when the round
    would break the site's policy). After DP training: `commit`, before the update
    leaves. The lock spans all three: two runs on this data set at once cannot both
    spend the same remaining budget.
    """

    def __init__(
        self,
        site: SiteSettings,
        dataset_fingerprint: str,
        ledger: PrivacyLedger,
        request: RoundRequest,
    ) -> None:
        self._site, self._fingerprint = site, dataset_fingerprint
        self._ledger, self._request = ledger, request
        self._path = ledger_path(site.ledger_dir, dataset_fingerprint)
        self._releases = ReleaseCache(site.state_path / RELEASES_DIR)

    @classmethod
    @contextmanager
    def locked(
        cls, site: SiteSettings, dataset_fingerprint: str, request: RoundRequest
    ) -> Iterator[PrivacyBudget]:
        """The budget of `request`'s round on the data set, its ledger locked throughout;
        raises `LedgerError` when the ledger lacks rounds the audit log records (F9)."""
        path = ledger_path(site.ledger_dir, dataset_fingerprint)
        with ledger_lock(path):
            ledger = open_ledger(path, dataset_fingerprint, site)
            yield cls(site, dataset_fingerprint, ledger, request)

    @property
    def head(self) -> LedgerHead:
        """The ledger's head now (sent with every train reply)."""
        return self._ledger.head

    def kept(self, global_sha256: str) -> Release | None:
        """The update this run released for the round from the model `global_sha256`
        (the server crashed and resumed), or None when the round is not in the ledger."""
        request = self._request
        return kept_release(
            self._releases, self._ledger, request.run_id, request.round, global_sha256
        )

    def plan(self, num_examples: int) -> DPRound | None:
        """The round's DP-SGD parameters (`plan_round`), or None for a non-private round
        the policy allows; raises `PrivacyRefusedError` when the site refuses it."""
        return plan_round(self._site.privacy, self._ledger, self._request, num_examples)

    def commit(
        self,
        spend: PrivacySpend,
        num_examples: int,
        weights: np.ndarray,
        global_sha256: str,
        flower_run: int,
    ) -> ConfigRecord:
        """Commit what a DP round spent, before its update leaves: the ledger entry on
        disk, then the release (`weights`, trained from the model `global_sha256`) kept
        for a resend, then the node's audit record (`privacy_spent`). Returns the privacy
        record that goes with the update."""
        request, site = self._request, self._site
        entry = record_round(self._ledger, self._path, request, spend, num_examples)
        privacy = entry.spend().to_record()
        # No training loss: it is not a DP release (docs/privacy.md).
        metrics = {rk.M_NUM_EXAMPLES: float(num_examples)}
        release = Release(request.round, global_sha256, weights, metrics, dict(privacy))
        self._releases.save(request.run_id, release)
        node_audit_for(site).append(
            PRIVACY_SPENT,
            flower_run=flower_run,
            round=request.round,
            dataset_fingerprint=self._fingerprint,
            epsilon=spend.epsilon,
            delta=spend.delta,
            run_epsilon=entry.run_epsilon,
            noise_multiplier=spend.noise_multiplier,
            sample_rate=spend.sample_rate,
            steps=spend.steps,
        )
        logger.info(
            "round %d: DP-SGD sigma %.3f, q %.4f, %d steps; data set epsilon now %.3f "
            "(delta %g, limit %g), this run %.3f",
            request.round,
            spend.noise_multiplier,
            spend.sample_rate,
            spend.steps,
            spend.epsilon,
            spend.delta,
            site.privacy.max_epsilon,
            entry.run_epsilon,
        )
        return privacy
