"""Does a study fit this site? Its privacy settings against the site's policy (and, at
approval, the budget left in the data set's ledger), and its task and model against the
data set's manifest. One check for `consortia node approve` and for the node before it
trains: each refusal is one sentence naming the run setting and the site's limit.

The data set is judged by its manifest alone (task, dimensions, channels, label values),
so the check is cheap enough for every message; the remaining budget needs the data set's
fingerprint (every file hashed once, then cached) and is only asked for at approval. At
the node, the privacy gate (`consortia.client.privacy.budget`) still refuses each round
that would pass the limit.
"""

from __future__ import annotations

from consortia.client.data.manifest import Manifest, load_manifest
from consortia.common.config.privacy_settings import PrivacyPolicy
from consortia.common.config.settings import Role, RunSettings, SiteSettings, Task
from consortia.common.errors import ConfigError, ConsortiaError

__all__ = [
    "StudyRefusedError",
    "data_refusals",
    "epsilon_spent",
    "policy_refusals",
    "study_refusals",
]


class StudyRefusedError(ConsortiaError):
    """The study breaks the site's privacy policy or does not fit its data set."""


def policy_refusals(
    settings: RunSettings, policy: PrivacyPolicy, *, spent: float | None = None
) -> list[str]:
    """Why the study's DP-SGD breaks `policy`; `spent`: epsilon already spent on the data
    set (its ledger), to refuse a target above what is left."""
    dp = settings.privacy
    if not dp.enabled:
        if policy.allow_non_private:
            return []
        return [
            "DP is off (run.privacy.enabled = false) but the site's policy forbids "
            "non-private training (privacy.allow_non_private = false)"
        ]
    reasons: list[str] = []
    if dp.max_grad_norm > policy.max_grad_norm:
        reasons.append(
            f"clipping norm run.privacy.max_grad_norm = {dp.max_grad_norm:g} is above the "
            f"site's maximum privacy.max_grad_norm = {policy.max_grad_norm:g}"
        )
    if dp.noise_multiplier is not None and dp.noise_multiplier < policy.min_noise_multiplier:
        reasons.append(
            f"noise multiplier {dp.noise_multiplier:g} is below the site's minimum "
            f"privacy.min_noise_multiplier = {policy.min_noise_multiplier:g}"
        )
    target = dp.target_epsilon
    if target is not None and target > policy.max_epsilon:
        reasons.append(
            f"epsilon run.privacy.target_epsilon = {target:g} is above the site's limit "
            f"privacy.max_epsilon = {policy.max_epsilon:g}"
        )
    elif target is not None and spent is not None and target > policy.max_epsilon - spent:
        left = max(policy.max_epsilon - spent, 0.0)
        reasons.append(
            f"epsilon run.privacy.target_epsilon = {target:g} is above the budget left on "
            f"this data set: {left:.3f} of privacy.max_epsilon = {policy.max_epsilon:g} "
            f"({spent:.3f} spent)"
        )
    return reasons


def _label_values(manifest: Manifest) -> list[int]:
    return sorted(manifest.dataset.labels or {})


def data_refusals(settings: RunSettings, manifest: Manifest, source: str) -> list[str]:
    """Why the study's task and model do not fit the data set of `manifest` (`source`
    names the manifest file)."""
    reasons: list[str] = []
    info, preprocess = manifest.dataset, manifest.preprocess
    if settings.task is not info.task:
        reasons.append(
            f"the study is {settings.task.value} (run.task) but data set {info.name} is "
            f"{info.task.value} ({source}: dataset.task)"
        )
    size = settings.plan.spatial_size if settings.plan is not None else preprocess.spatial_size
    model = settings.model
    if model.spatial_dims != len(size):
        reasons.append(
            f"the model is {model.spatial_dims}D (run.model.spatial_dims) but data set "
            f"{info.name} is {len(size)}D ({source}: preprocess.spatial_size {list(size)})"
        )
    if model.in_channels != preprocess.channels:
        reasons.append(
            f"the model takes {model.in_channels} channel(s) (run.model.in_channels) but data "
            f"set {info.name} has {preprocess.channels} ({source}: preprocess.channels)"
        )
    values = _label_values(manifest)
    if values and values[-1] >= model.out_channels:
        kind = "classes" if settings.task is Task.CLASSIFICATION else "labels"
        reasons.append(
            f"the model has {model.out_channels} outputs (run.model.out_channels) but data set "
            f"{info.name} has {kind} up to {values[-1]} ({source}: dataset.labels)"
        )
    return reasons


def epsilon_spent(site: SiteSettings, dataset: str, settings: RunSettings) -> float:
    """Epsilon spent so far on the data set (at the site's delta), from its ledger."""
    from consortia.client.data.dataset import SiteDataset  # hashes files: only when asked
    from consortia.common.privacy.ledger import PrivacyLedger, ledger_path

    data = SiteDataset.open(site.dataset(dataset).path, cache_dir=site.cache_dir)
    path = ledger_path(site.ledger_dir, data.fingerprint)
    ledger = PrivacyLedger.open(path, data.fingerprint, site.site.name)
    if not ledger.entries:
        return 0.0
    return ledger.spent(site.privacy.delta, settings.privacy.accountant)


def study_refusals(
    settings: RunSettings,
    site: SiteSettings,
    *,
    spent: float | None = None,
    name_files: bool = True,
) -> list[str]:
    """Every reason this site refuses the study (empty: it fits). Privacy applies to a
    training site only; a manifest data set is checked against the study. Reasons that
    may leave the site (`name_files=False`) name no file."""
    reasons: list[str] = []
    if site.site.role is Role.TRAIN:
        reasons += policy_refusals(settings, site.privacy, spent=spent)
    try:
        data = site.dataset(settings.dataset)
    except ConfigError as err:  # names the site and the data sets, no file
        return [*reasons, str(err)]
    if data.kind == "manifest":
        manifest = load_manifest(data.path)
        source = str(manifest.path) if name_files else "its manifest"
        reasons += data_refusals(settings, manifest.manifest, source)
    return reasons
