"""The server's side of privacy: what each site reports it spent, kept in the run folder,
and which sites left training because their privacy policy refused a round."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from flwr.app import ConfigRecord, Message

from consortia.common.config.privacy_settings import ACCOUNTANTS
from consortia.common.config.settings import RunSettings
from consortia.common.privacy.ledger import RoundSpend
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import (
    RecordFieldError,
    get_config_record,
    get_float,
    get_int,
    get_str,
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


def spend_record(spend: RoundSpend, num_examples: int) -> dict[str, Any]:
    """A round's spending as `results.json` keeps it (`rounds[].privacy[site]`)."""
    return asdict(spend) | {"num_examples": num_examples}


def _positive(config: ConfigRecord, key: str, upper: float = math.inf) -> float:
    value = get_float(config, key)
    if not (math.isfinite(value) and 0 < value <= upper):
        raise RecordFieldError(f"'{key}' out of range: {value}")
    return value


def read_privacy_report(reply: Message) -> RoundSpend:
    """The privacy record of a train reply, every field checked."""
    record = get_config_record(reply.content, rk.PRIVACY_KEY)
    accountant = get_str(record, rk.P_ACCOUNTANT)
    if accountant not in ACCOUNTANTS:
        raise RecordFieldError(f"'{rk.P_ACCOUNTANT}': unknown accountant {accountant!r}")
    steps = get_int(record, rk.P_STEPS)
    if steps <= 0:
        raise RecordFieldError(f"'{rk.P_STEPS}' must be positive")
    epsilon = get_float(record, rk.P_EPSILON)
    run_epsilon = get_float(record, rk.P_RUN_EPSILON)
    if not (math.isfinite(epsilon) and 0 <= run_epsilon <= epsilon + 1e-9):
        raise RecordFieldError("epsilon fields out of range")
    return RoundSpend(
        noise_multiplier=_positive(record, rk.P_NOISE_MULTIPLIER),
        sample_rate=_positive(record, rk.P_SAMPLE_RATE, 1.0),
        steps=steps,
        delta=_positive(record, rk.P_DELTA, 1.0),
        epsilon=epsilon,
        run_epsilon=run_epsilon,
        accountant=accountant,
        max_grad_norm=_positive(record, rk.P_MAX_GRAD_NORM),
    )


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

    def check(self, report: RoundSpend) -> None:
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

    def record(self, name: str, report: RoundSpend) -> None:
        self.latest[name] = report.epsilon

    def section(self) -> dict[str, Any]:
        """The `privacy` object of results.json."""
        return {
            "sample_level": self.settings.model_dump(mode="json"),
            "central": self.central,
            "sites": {
                name: {
                    "dataset_fingerprint": site.dataset_fingerprint,
                    "max_epsilon": site.max_epsilon,
                    "delta": site.delta,
                    "epsilon_before_run": site.epsilon_before_run,
                    "epsilon": self.latest.get(name, site.epsilon_before_run),
                    "excluded": self.excluded.get(name),
                }
                for name, site in sorted(self.sites.items())
            },
        }

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
