"""The server's side of privacy: what each site reports it spent, kept in the run folder,
and which sites left training because their privacy policy refused a round."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from flwr.app import Message

from consortia.common.config.settings import RunSettings
from consortia.common.privacy.spend import PrivacySpend
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import RecordFieldError, get_config_record
from consortia.server.run.record import (
    CentralPrivacyRecord,
    PrivacySection,
    RoundSpent,
    SampleLevelPrivacy,
    SitePrivacyRecord,
)

__all__ = ["RunPrivacy", "SitePrivacy", "read_privacy_report", "spend_record"]

_PARAM_TOLERANCE = 1e-9


@dataclass(frozen=True)
class SitePrivacy:
    """A site's privacy policy and spending as it announced them when the run began."""

    dataset_fingerprint: str
    max_epsilon: float
    delta: float
    epsilon_before_run: float


def spend_record(spend: PrivacySpend, num_examples: int) -> dict[str, Any]:
    """A round's spending as `results.json` keeps it (`rounds[].privacy[site]`)."""
    return RoundSpent(**spend.spend().model_dump(), num_examples=num_examples).model_dump()


def read_privacy_report(reply: Message) -> PrivacySpend:
    """The privacy record of a train reply, every field checked (`RecordFieldError`
    names the field)."""
    return PrivacySpend.from_record(get_config_record(reply.content, rk.PRIVACY_KEY))


class RunPrivacy:
    """Checks each site's privacy report against the run's settings and keeps the
    `privacy` section of `results.json` (schema in docs/results-schema.md)."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings.privacy
        self.sites: dict[str, SitePrivacy] = {}
        self.excluded: dict[str, str] = {}
        self.latest: dict[str, float] = {}
        self.central: dict[str, Any] = {
            **settings.central_privacy.model_dump(mode="json"),
            "epsilon": None,
        }

    def add_site(self, name: str, site: SitePrivacy) -> None:
        self.sites[name] = site

    def exclude(self, name: str, reason: str) -> None:
        """The site's policy refused a round: it trains no more in this run."""
        self.excluded[name] = reason

    def check(self, report: PrivacySpend) -> None:
        """Refuse a report that does not match what the run asked for."""
        wanted = self.settings
        if abs(report.max_grad_norm - wanted.max_grad_norm) > _PARAM_TOLERANCE:
            raise RecordFieldError(
                f"clipping norm {report.max_grad_norm:g} differs from the run's "
                f"{wanted.max_grad_norm:g}"
            )
        if report.accountant != wanted.accountant:
            raise RecordFieldError(f"accountant {report.accountant} is not the run's")
        fixed = wanted.noise_multiplier
        if fixed is not None and abs(report.noise_multiplier - fixed) > _PARAM_TOLERANCE:
            raise RecordFieldError(
                f"noise multiplier {report.noise_multiplier:g} differs from the run's {fixed:g}"
            )

    def record(self, name: str, report: PrivacySpend) -> None:
        self.latest[name] = report.epsilon

    def section(self) -> dict[str, Any]:
        """The `privacy` object of results.json."""
        section = PrivacySection(
            sample_level=SampleLevelPrivacy(**self.settings.model_dump(mode="json")),
            central=CentralPrivacyRecord(**self.central),
            sites={
                name: SitePrivacyRecord(
                    dataset_fingerprint=site.dataset_fingerprint,
                    max_epsilon=site.max_epsilon,
                    delta=site.delta,
                    epsilon_before_run=site.epsilon_before_run,
                    epsilon=self.latest.get(name, site.epsilon_before_run),
                    excluded=self.excluded.get(name),
                )
                for name, site in sorted(self.sites.items())
            },
        )
        return section.model_dump(mode="json", exclude_unset=True)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: each site's policy and spending as the run began,
        who left training and why, and the latest epsilon reported per site."""
        return {
            "sites": {name: asdict(site) for name, site in self.sites.items()},
            "excluded": dict(self.excluded),
            "latest": dict(self.latest),
            "central": dict(self.central),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`; raises `ValueError` naming what does not fit. Sites
        that joined again keep what they announced when the run first began."""
        if set(state) != {"sites", "excluded", "latest", "central"}:
            raise ValueError(f"privacy state: unexpected keys {sorted(state)}")
        sites: dict[str, SitePrivacy] = {}
        for name, fields in dict(state["sites"]).items():
            try:
                sites[str(name)] = SitePrivacy(**fields)
            except TypeError as err:
                raise ValueError(f"privacy state of site {name}: {err}") from None
        latest = {str(k): float(v) for k, v in dict(state["latest"]).items()}
        if any(not math.isfinite(v) or v < 0 for v in latest.values()):
            raise ValueError("privacy state: an epsilon is negative or not finite")
        self.sites.update(sites)
        self.excluded = {str(k): str(v) for k, v in dict(state["excluded"]).items()}
        self.latest = latest
        self.central = dict(state["central"])

    def eligible(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if name not in self.excluded]
