"""The node's privacy gate: plan a round's DP-SGD within the site's policy, refuse a
round that would break it, and record what was spent in the data set's ledger.

`plan_round` runs before any training and `record_round` after it, both while the
ledger is locked (`ledger_lock`), and the update leaves the site only after the ledger
entry is on disk: a crash can over-count spending, never under-count it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from consortia.client.dp_training import DPRound, DPSpend
from consortia.common.errors import ConsortiaError
from consortia.common.logs import utc_now
from consortia.common.privacy_accounting import epsilon_of, noise_for_target, poisson_plan
from consortia.common.privacy_ledger import LedgerEntry, PrivacyLedger
from consortia.common.privacy_planner import learning_refusal
from consortia.common.privacy_settings import PrivacyPolicy, SamplePrivacySettings

__all__ = ["PrivacyRefusedError", "RoundRequest", "plan_round", "record_round"]

# Opacus' noise search stops within 1% of the target epsilon.
_TARGET_TOLERANCE = 1.01


class PrivacyRefusedError(ConsortiaError):
    """The site's policy forbids this round; the message says why (sent to the server)."""


@dataclass(frozen=True)
class RoundRequest:
    """What the server asks of one round, as far as privacy goes."""

    run_id: str
    round: int
    total_rounds: int
    local_epochs: int
    batch_size: int
    privacy: SamplePrivacySettings


def plan_round(
    policy: PrivacyPolicy, ledger: PrivacyLedger, request: RoundRequest, num_examples: int
) -> DPRound | None:
    """The DP-SGD parameters of this round, or None for a non-private round the policy
    allows. Raises `PrivacyRefusedError` when the round would break the site's policy."""
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
        run_projected = epsilon_of(
            [*ledger.history(request.run_id), step], policy.delta, settings.accountant
        )
        if run_projected > settings.target_epsilon * _TARGET_TOLERANCE:
            raise PrivacyRefusedError(
                f"this round would bring the run's epsilon to {run_projected:.3f}, over "
                f"the run's target {settings.target_epsilon:g}"
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
    )
    ledger.append(entry)
    ledger.save(path)
    return entry
