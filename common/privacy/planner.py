"""The privacy planner: what a study's DP-SGD will cost a site, and whether it can learn,
before any budget is spent.

Pure functions over the same accounting code the node's privacy gate and DP training use
(`consortia.common.privacy.accounting`: Poisson plan, noise calibration, epsilon), so the
plan's noise multiplier, sample rate, steps and epsilon are the ones the study's rounds
will record in the site's ledger.

Whether a study is likely to learn is judged on one figure, the noise per coordinate of
the averaged gradient against the clipping norm, sigma * C / B (B = N * q, the expected
Poisson batch): it is the Gaussian noise a step adds, in units of the largest signal one
clipped step can carry. The thresholds are calibrated on two measured studies
(`CALIBRATION`, docs/privacy.md "Privacy planner"): a coarse guide, not a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from consortia.common.config.privacy_settings import Accountant, PrivacyPolicy
from consortia.common.config.settings import Role, RunSettings, SiteSettings
from consortia.common.errors import ConsortiaError
from consortia.common.privacy.accounting import (
    HistoryEntry,
    epsilon_of,
    noise_for_target,
    poisson_plan,
)

__all__ = [
    "CALIBRATION",
    "LIKELY_TO_LEARN_UP_TO",
    "UNLIKELY_TO_LEARN_FROM",
    "CalibrationPoint",
    "LearningOutlook",
    "PlanError",
    "PrivacyPlan",
    "UnlikelyToLearnError",
    "check_plannable",
    "learning_outlook",
    "learning_refusal",
    "logical_batch_size",
    "outlook_message",
    "plan_study",
    "rounds_within_limit",
]


class PlanError(ConsortiaError):
    """The planner cannot plan this study at this site; the message names the file and
    the field at fault."""


class UnlikelyToLearnError(ConsortiaError):
    """The site's policy (`refuse_if_unlikely_to_learn`) refuses a study that is unlikely
    to learn; the message gives the figures."""


@dataclass(frozen=True)
class CalibrationPoint:
    """A measured study: its sigma * C / B (at C = 1) and what it learned."""

    study: str
    cases: str
    noise_per_coordinate: float
    outcome: str
    learned: bool


#: The measurements the thresholds rest on (issue 18, 2-core CPU, 2026-12-07). Both
#: trained from scratch at target epsilon 8, delta 1e-5, clipping norm 1.
CALIBRATION: tuple[CalibrationPoint, ...] = (
    CalibrationPoint(
        study="consortia demo (synthetic 2D segmentation, batch 64, 5 rounds)",
        cases="960 cases per site",
        noise_per_coordinate=0.012,
        outcome="held-out Dice 0.147, against 0.22 without DP",
        learned=True,
    ),
    CalibrationPoint(
        study="configs/real/run-hippocampus.toml (3D MRI, batch 4, 20 rounds)",
        cases="36-38 cases per site",
        noise_per_coordinate=0.31,
        outcome="held-out Dice 0.035 untrained, 0.027 after 5 rounds",
        learned=False,
    ),
)

#: sigma * C / B (in units of C) up to which a study is about as noisy as one that learned.
LIKELY_TO_LEARN_UP_TO = 0.02
#: sigma * C / B (in units of C) from which a study is judged unlikely to learn: a factor
#: 3 below the study that did not learn at all, 8 above the one that learned.
UNLIKELY_TO_LEARN_FROM = 0.1


class LearningOutlook(StrEnum):
    """The planner's judgement of a study's noise against the calibration."""

    LIKELY = "likely"
    UNCERTAIN = "uncertain"
    UNLIKELY = "unlikely"


def learning_outlook(noise_to_clip: float) -> LearningOutlook:
    """The outlook of a study whose averaged gradient carries noise of standard deviation
    `noise_to_clip` * C per coordinate (sigma / B)."""
    if noise_to_clip >= UNLIKELY_TO_LEARN_FROM:
        return LearningOutlook.UNLIKELY
    if noise_to_clip <= LIKELY_TO_LEARN_UP_TO:
        return LearningOutlook.LIKELY
    return LearningOutlook.UNCERTAIN


def outlook_message(noise_to_clip: float, max_grad_norm: float, num_examples: int) -> str:
    """One sentence for a site: the figure, what comparable studies did, what to change."""
    figure = f"sigma*C/B = {noise_to_clip * max_grad_norm:.3g}"
    if max_grad_norm != 1.0:
        figure += f" ({noise_to_clip:.3g} of the clipping norm C = {max_grad_norm:g})"
    learned, failed = CALIBRATION[0], CALIBRATION[1]
    outlook = learning_outlook(noise_to_clip)
    if outlook is LearningOutlook.UNLIKELY:
        return (
            f"{figure} at {num_examples} cases: comparable studies did not learn "
            f"(hippocampus at {failed.cases}, sigma*C/B = {failed.noise_per_coordinate:g}: "
            f"{failed.outcome}); consider a warm start, fewer rounds, larger batches or "
            "a higher epsilon"
        )
    if outlook is LearningOutlook.LIKELY:
        return (
            f"{figure} at {num_examples} cases: about as noisy as a study that learned "
            f"(demo at {learned.cases}, sigma*C/B = {learned.noise_per_coordinate:g}: "
            f"{learned.outcome}); expect some loss against training without DP"
        )
    return (
        f"{figure} at {num_examples} cases: between a study that learned "
        f"(sigma*C/B = {learned.noise_per_coordinate:g}) and one that did not "
        f"({failed.noise_per_coordinate:g}); not measured here: expect a clear loss against "
        "training without DP"
    )


def learning_refusal(
    policy: PrivacyPolicy,
    noise_multiplier: float,
    sample_rate: float,
    num_examples: int,
    max_grad_norm: float,
) -> str | None:
    """The reason the site's policy refuses a study's DP-SGD, or None: only with
    `refuse_if_unlikely_to_learn` and a study judged unlikely to learn."""
    if not policy.refuse_if_unlikely_to_learn:
        return None
    noise_to_clip = noise_multiplier / (num_examples * sample_rate)
    if learning_outlook(noise_to_clip) is not LearningOutlook.UNLIKELY:
        return None
    return (
        "the site's policy refuses studies unlikely to learn "
        "([privacy] refuse_if_unlikely_to_learn): "
        + outlook_message(noise_to_clip, max_grad_norm, num_examples)
    )


@dataclass(frozen=True)
class PrivacyPlan:
    """What a study's DP-SGD will do and spend at one site, planned before round 1.

    `noise_multiplier`, `sample_rate` and `steps_per_round` are what every round of the
    study records in the site's ledger; `study_epsilon` is the study's own spend over
    `rounds` rounds, `spent_before` / `spent_after` the data set's lifetime total at
    `delta` (the site's), and `rounds_within_limit` how many rounds the site's
    `max_epsilon` lets it train (the node refuses the rest)."""

    site: str
    study: str
    num_examples: int
    batch_size: int
    rounds: int
    local_epochs: int
    sample_rate: float
    expected_batch_size: float
    steps_per_round: int
    steps: int
    noise_multiplier: float
    target_epsilon: float | None
    max_grad_norm: float
    delta: float
    accountant: Accountant
    study_epsilon: float
    spent_before: float
    spent_after: float
    max_epsilon: float
    rounds_within_limit: int
    noise_to_clip: float
    outlook: LearningOutlook
    assessment: str
    refusals: tuple[str, ...]

    @property
    def noise_per_coordinate(self) -> float:
        """sigma * C / B: the noise standard deviation per coordinate of the averaged
        gradient, in the gradient's units."""
        return self.noise_to_clip * self.max_grad_norm

    @property
    def budget_left(self) -> float:
        """The site's lifetime budget left after the whole study (negative: over it)."""
        return self.max_epsilon - self.spent_after

    @property
    def unlikely_to_learn(self) -> bool:
        return self.outlook is LearningOutlook.UNLIKELY

    def round_entry(self) -> HistoryEntry:
        """The accountant history entry of one of the study's rounds."""
        return (self.noise_multiplier, self.sample_rate, self.steps_per_round)


def rounds_within_limit(
    history: Sequence[HistoryEntry],
    entry: HistoryEntry,
    rounds: int,
    *,
    max_epsilon: float,
    delta: float,
    accountant: Accountant,
) -> int:
    """How many of `rounds` rounds of `entry` fit after `history` within `max_epsilon`
    (epsilon grows with every round: bisection, a few accountant calls)."""
    sigma, rate, steps = entry

    def fits(count: int) -> bool:
        added = [(sigma, rate, steps * count)] if count else []
        return epsilon_of([*history, *added], delta, accountant) <= max_epsilon

    if not fits(0):
        return 0
    low, high = 0, rounds
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def check_plannable(
    run: RunSettings,
    site: SiteSettings,
    *,
    run_source: str = "run config",
    site_source: str = "site config",
) -> None:
    """The checks that need no data: a training site, a study with DP-SGD. `PlanError`
    naming the file and field otherwise."""
    if site.site.role is not Role.TRAIN:
        raise PlanError(
            f"{site_source}: site.role: {site.site.name} is a {site.site.role.value} site; "
            "it never trains and spends no privacy budget"
        )
    if not run.privacy.enabled:
        raise PlanError(
            f"{run_source}: run.privacy.enabled: the study trains without differential "
            "privacy; there is no DP target to plan"
        )


def _check_examples(
    run: RunSettings, site: SiteSettings, num_examples: int, *, run_source: str, site_source: str
) -> None:
    """`PlanError` unless the data set's `num_examples` suit the study's batch size and the
    site's delta."""
    batch_size, delta = logical_batch_size(run), site.privacy.delta
    field = (
        "run.privacy.recipe.batch_size"
        if run.privacy.recipe.batch_size is not None
        else "run.training.batch_size"
    )
    if num_examples <= 0:
        raise PlanError(
            f"{site_source}: data: the data set has no training examples for this study"
        )
    if batch_size > num_examples:
        raise PlanError(
            f"{run_source}: {field}: {batch_size} is larger than the "
            f"{num_examples} training examples of site {site.site.name}"
        )
    if delta >= 1.0 / num_examples:
        raise PlanError(
            f"{site_source}: privacy.delta: {delta:g} is not below 1/N = "
            f"{1.0 / num_examples:g} for {num_examples} training examples"
        )


def _noise_multiplier(
    run: RunSettings, site: SiteSettings, sample_rate: float, steps: int, *, run_source: str
) -> float:
    """The study's noise multiplier: the one it sets, else the one that reaches its target
    epsilon at the site's delta over `steps` steps."""
    privacy, delta = run.privacy, site.privacy.delta
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    target = float(privacy.target_epsilon or 0.0)
    try:
        return noise_for_target(target, delta, sample_rate, steps, privacy.accountant)
    except ValueError as err:
        raise PlanError(
            f"{run_source}: run.privacy.target_epsilon: no noise multiplier reaches "
            f"epsilon {target:g} at delta {delta:g} over {steps} steps: {err}"
        ) from None


def logical_batch_size(run: RunSettings) -> int:
    """The expected Poisson batch of one DP-SGD step of `run` (what DP training samples:
    `[run.privacy.recipe] batch_size`, else `[run.training] batch_size`)."""
    return run.privacy.recipe.logical_batch_size(run.training.batch_size)


def plan_study(
    run: RunSettings,
    site: SiteSettings,
    num_examples: int,
    history: Sequence[HistoryEntry] = (),
    *,
    run_source: str = "run config",
    site_source: str = "site config",
) -> PrivacyPlan:
    """The privacy plan of `run` at `site`, whose data set has `num_examples` training
    examples and the ledger `history`. Raises `PlanError`, naming the file and field,
    for a study it cannot plan."""
    check_plannable(run, site, run_source=run_source, site_source=site_source)
    privacy, policy, batch_size = run.privacy, site.privacy, logical_batch_size(run)
    _check_examples(run, site, num_examples, run_source=run_source, site_source=site_source)
    poisson = poisson_plan(num_examples, batch_size)
    steps_per_round = poisson.steps(run.training.local_epochs)
    steps = steps_per_round * run.rounds
    sigma = _noise_multiplier(run, site, poisson.sample_rate, steps, run_source=run_source)
    study = [(sigma, poisson.sample_rate, steps)]
    study_epsilon, spent_before, spent_after = (
        epsilon_of(entries, policy.delta, privacy.accountant)
        for entries in (study, history, [*history, *study])
    )
    within = rounds_within_limit(
        history,
        (sigma, poisson.sample_rate, steps_per_round),
        run.rounds,
        max_epsilon=policy.max_epsilon,
        delta=policy.delta,
        accountant=privacy.accountant,
    )
    expected_batch = num_examples * poisson.sample_rate
    noise_to_clip = sigma / expected_batch
    return PrivacyPlan(
        site=site.site.name,
        study=run.name,
        num_examples=num_examples,
        batch_size=batch_size,
        rounds=run.rounds,
        local_epochs=run.training.local_epochs,
        sample_rate=poisson.sample_rate,
        expected_batch_size=expected_batch,
        steps_per_round=steps_per_round,
        steps=steps,
        noise_multiplier=sigma,
        target_epsilon=privacy.target_epsilon,
        max_grad_norm=privacy.max_grad_norm,
        delta=policy.delta,
        accountant=privacy.accountant,
        study_epsilon=study_epsilon,
        spent_before=spent_before,
        spent_after=spent_after,
        max_epsilon=policy.max_epsilon,
        rounds_within_limit=within,
        noise_to_clip=noise_to_clip,
        outlook=learning_outlook(noise_to_clip),
        assessment=outlook_message(noise_to_clip, privacy.max_grad_norm, num_examples),
        refusals=_refusals(site, run, sigma, poisson.sample_rate, num_examples, within),
    )


def _refusals(
    site: SiteSettings,
    run: RunSettings,
    sigma: float,
    sample_rate: float,
    num_examples: int,
    within: int,
) -> tuple[str, ...]:
    """Why the site's node will refuse rounds of this study (its privacy gate's checks)."""
    policy, privacy = site.privacy, run.privacy
    reasons = []
    if sigma < policy.min_noise_multiplier:
        reasons.append(
            f"noise multiplier {sigma:.3f} is below the site's minimum "
            f"{policy.min_noise_multiplier:g} (privacy.min_noise_multiplier)"
        )
    if privacy.max_grad_norm > policy.max_grad_norm:
        reasons.append(
            f"clipping norm {privacy.max_grad_norm:g} exceeds the site's maximum "
            f"{policy.max_grad_norm:g} (privacy.max_grad_norm)"
        )
    if within < run.rounds:
        reasons.append(
            f"the site's lifetime limit (privacy.max_epsilon = {policy.max_epsilon:g}) "
            f"allows {within} of the study's {run.rounds} rounds"
        )
    refusal = learning_refusal(policy, sigma, sample_rate, num_examples, privacy.max_grad_norm)
    if refusal is not None:
        reasons.append(refusal)
    return tuple(reasons)
