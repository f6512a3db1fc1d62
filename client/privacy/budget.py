"""The node's privacy gate: plan a round's DP-SGD within the site's policy, refuse a
round that would break it, and record what was spent in the data set's ledger.

`plan_round` runs before any training and `record_round` after it, both while the
ledger is locked (`ledger_lock`), and the update leaves the site only after the ledger
entry is on disk: a crash can over-count spending, never under-count it.

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

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from consortia.client.node.audit import recorded_spending
from consortia.client.privacy.dp_training import DPRound, DPSpend
from consortia.common.audit.log import AUDIT_LOG_FILE, AuditLogError
from consortia.common.config.privacy_settings import PrivacyPolicy, SamplePrivacySettings
from consortia.common.config.settings import SiteSettings, run_settings_from_json
from consortia.common.errors import ConfigError, ConsortiaError
from consortia.common.logs import utc_now
from consortia.common.privacy.accounting import epsilon_of, noise_for_target, poisson_plan
from consortia.common.privacy.ledger import LedgerEntry, LedgerError, PrivacyLedger
from consortia.common.privacy.planner import learning_refusal
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.run_identity import config_hash

__all__ = [
    "PrivacyRefusedError",
    "RoundRequest",
    "open_ledger",
    "plan_round",
    "record_round",
    "round_request",
]

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


def round_request(instruction: Instruction, run_config: Mapping[str, object]) -> RoundRequest:
    """The privacy side of a train instruction, keyed on the hash of the run config that
    Flower carries (`RUN_CONFIG_SETTINGS`: the config the approval mod checked), not on
    the run id the server chose."""
    text = run_config.get(rk.RUN_CONFIG_SETTINGS)
    if not isinstance(text, str):
        raise ConfigError(f"the run config has no '{rk.RUN_CONFIG_SETTINGS}'")
    return RoundRequest(
        run_id=instruction.run_id,
        config_hash=config_hash(run_settings_from_json(text)),
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
    plan = poisson_plan(num_examples, request.batch_size)
    steps = plan.steps(request.local_epochs)
    if settings.noise_multiplier is not None:
        sigma = settings.noise_multiplier
    else:
        target = float(settings.target_epsilon or 0.0)
        planned = steps * request.total_rounds
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
    history = ledger.history()
    step = (sigma, plan.sample_rate, steps)
    projected = epsilon_of([*history, step], policy.delta, settings.accountant)
    if projected > policy.max_epsilon:
        spent = epsilon_of(history, policy.delta, settings.accountant)
        raise PrivacyRefusedError(
            f"privacy budget: this round would bring the data set's epsilon from "
            f"{spent:.3f} to {projected:.3f}, over the site's limit {policy.max_epsilon:g} "
            f"(delta {policy.delta:g})"
        )
    if settings.target_epsilon is not None:
        approved = settings.target_epsilon
    else:  # a fixed noise multiplier: the epsilon of the approved number of rounds
        whole_run = [(sigma, plan.sample_rate, steps * request.total_rounds)]
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
    return DPRound(
        noise_multiplier=sigma,
        max_grad_norm=settings.max_grad_norm,
        delta=policy.delta,
        accountant=settings.accountant,
        history=tuple(history),
    )


def record_round(
    ledger: PrivacyLedger,
    path: Path,
    request: RoundRequest,
    spend: DPSpend,
    num_examples: int,
) -> LedgerEntry:
    """Append the round to the ledger and write it (atomically) before the update leaves."""
    run_epsilon = epsilon_of(
        [*ledger.history(request.run_id), spend.history_entry()], spend.delta, spend.accountant
    )
    entry = LedgerEntry(
        **asdict(spend),
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
