"""The privacy records of a run folder's `results.json`, read and checked for the audit.

`read_run_records` turns the `privacy` section and every round's `privacy` object
(docs/results-schema.md) into typed records, or raises `ConsortiaError` naming the file
and the field that is missing or malformed. It judges nothing: that is the audit's job
(`consortia.server.audit.privacy_audit`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortia.common.config.privacy_settings import ACCOUNTANTS
from consortia.common.errors import ConsortiaError
from consortia.common.privacy.accounting import HistoryEntry
from consortia.common.privacy.ledger import LedgerEntry
from consortia.server.run.folder import RESULTS_FILE

__all__ = ["RunPrivacyRecords", "ServerRecord", "SitePolicy", "read_run_records"]


@dataclass(frozen=True)
class SitePolicy:
    """`privacy.sites[name]`: what the site announced when the run began."""

    dataset_fingerprint: str
    max_epsilon: float
    delta: float
    epsilon_before_run: float | None
    excluded: str | None


@dataclass(frozen=True)
class ServerRecord:
    """`rounds[i].privacy[name]`: what the site reported one round spent."""

    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    run_epsilon: float
    accountant: str
    max_grad_norm: float | None
    num_examples: int | None

    def history_entry(self) -> HistoryEntry:
        return (self.noise_multiplier, self.sample_rate, self.steps)

    @classmethod
    def from_ledger_entry(cls, entry: LedgerEntry) -> ServerRecord:
        return cls(
            round=entry.round,
            noise_multiplier=entry.noise_multiplier,
            sample_rate=entry.sample_rate,
            steps=entry.steps,
            delta=entry.delta,
            epsilon=entry.epsilon,
            run_epsilon=entry.run_epsilon,
            accountant=entry.accountant,
            max_grad_norm=entry.max_grad_norm,
            num_examples=entry.num_examples,
        )


@dataclass(frozen=True)
class RunPrivacyRecords:
    """Everything the audit needs from `results.json`."""

    run_name: str
    sample_level: dict[str, Any]
    central: dict[str, Any]
    sites: dict[str, SitePolicy]
    data_fingerprints: dict[str, str]
    records: dict[str, list[ServerRecord]]
    participants: dict[int, list[str]]

    def site_names(self) -> list[str]:
        """Sites with a privacy policy or privacy records, sorted."""
        return sorted(set(self.sites) | set(self.records))

    def sites_by_fingerprint(self) -> dict[str, str]:
        """Data set fingerprint -> name of a site in `site_names()` (the policy's
        fingerprint first; a held-out site's data set spends no privacy)."""
        names = set(self.site_names())
        found = {fp: name for name, fp in self.data_fingerprints.items() if name in names}
        found.update({policy.dataset_fingerprint: name for name, policy in self.sites.items()})
        return found


class _Reader:
    """Typed access to JSON values; every error names the file and the field path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> ConsortiaError:
        return ConsortiaError(f"{self.path}: {where}: {problem}")

    def obj(self, value: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, "must be an object")
        return value

    def get(self, data: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in data:
            raise self.fail(f"{where}.{key}", "missing")
        return data[key]

    def number(self, data: Mapping[str, Any], key: str, where: str, *, low: float = 0.0) -> float:
        value = self.get(data, key, where)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{where}.{key}", f"must be a number, got {value!r}")
        if not math.isfinite(value) or value < low:
            raise self.fail(f"{where}.{key}", f"must be finite and >= {low:g}, got {value!r}")
        return float(value)

    def optional_number(self, data: Mapping[str, Any], key: str, where: str) -> float | None:
        return None if data.get(key) is None else self.number(data, key, where)

    def integer(self, data: Mapping[str, Any], key: str, where: str) -> int:
        value = self.get(data, key, where)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(f"{where}.{key}", f"must be a non-negative integer, got {value!r}")
        return value

    def text(self, data: Mapping[str, Any], key: str, where: str) -> str:
        value = self.get(data, key, where)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
        return value

    def optional_text(self, data: Mapping[str, Any], key: str, where: str) -> str | None:
        return None if data.get(key) is None else self.text(data, key, where)

    def policy(self, data: Any, where: str) -> SitePolicy:
        data = self.obj(data, where)
        delta = self.number(data, "delta", where)
        if not 0 < delta < 1:
            raise self.fail(f"{where}.delta", f"must be in (0, 1), got {delta!r}")
        return SitePolicy(
            dataset_fingerprint=self.text(data, "dataset_fingerprint", where),
            max_epsilon=self.number(data, "max_epsilon", where),
            delta=delta,
            epsilon_before_run=self.optional_number(data, "epsilon_before_run", where),
            excluded=self.optional_text(data, "excluded", where),
        )

    def record(self, round_: int, data: Any, where: str) -> ServerRecord:
        data = self.obj(data, where)
        sigma = self.number(data, "noise_multiplier", where)
        rate = self.number(data, "sample_rate", where)
        delta = self.number(data, "delta", where)
        accountant = self.text(data, "accountant", where)
        if sigma <= 0:
            raise self.fail(f"{where}.noise_multiplier", "must be positive")
        if not 0 < rate <= 1:
            raise self.fail(f"{where}.sample_rate", f"must be in (0, 1], got {rate!r}")
        if not 0 < delta < 1:
            raise self.fail(f"{where}.delta", f"must be in (0, 1), got {delta!r}")
        if accountant not in ACCOUNTANTS:
            raise self.fail(f"{where}.accountant", f"unknown accountant {accountant!r}")
        return ServerRecord(
            round=round_,
            noise_multiplier=sigma,
            sample_rate=rate,
            steps=self.integer(data, "steps", where),
            delta=delta,
            epsilon=self.number(data, "epsilon", where),
            run_epsilon=self.number(data, "run_epsilon", where),
            accountant=accountant,
            max_grad_norm=self.optional_number(data, "max_grad_norm", where),
            num_examples=(
                None
                if data.get("num_examples") is None
                else self.integer(data, "num_examples", where)
            ),
        )


def read_run_records(run_dir: Path) -> RunPrivacyRecords:
    """The privacy records of the run in `run_dir`; `ConsortiaError` if unusable."""
    path = run_dir / RESULTS_FILE
    reader = _Reader(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConsortiaError(f"{path}: no such file (is {run_dir} a run folder?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConsortiaError(f"{path}: unreadable: {err}") from None
    results = reader.obj(results, "top level")
    run_name = reader.text(results, "run_name", "top level")
    privacy = reader.obj(reader.get(results, "privacy", "top level"), "privacy")
    sample_level = dict(reader.obj(reader.get(privacy, "sample_level", "privacy"), "privacy"))
    central = dict(reader.obj(privacy.get("central") or {}, "privacy.central"))
    sites_data = reader.obj(reader.get(privacy, "sites", "privacy"), "privacy.sites")
    sites = {
        name: reader.policy(data, f"privacy.sites[{name!r}]") for name, data in sites_data.items()
    }
    fingerprints: dict[str, str] = {}
    site_list = reader.get(results, "sites", "top level")
    if not isinstance(site_list, list):
        raise reader.fail("sites", "must be a list")
    for index, site in enumerate(site_list):
        site = reader.obj(site, f"sites[{index}]")
        name = reader.text(site, "name", f"sites[{index}]")
        fingerprint = site.get("data_fingerprint")
        if isinstance(fingerprint, str) and fingerprint:
            fingerprints[name] = fingerprint
    rounds = reader.get(results, "rounds", "top level")
    if not isinstance(rounds, list):
        raise reader.fail("rounds", "must be a list")
    records: dict[str, list[ServerRecord]] = {}
    participants: dict[int, list[str]] = {}
    for index, entry in enumerate(rounds):
        entry = reader.obj(entry, f"rounds[{index}]")
        round_ = reader.integer(entry, "round", f"rounds[{index}]")
        if isinstance(entry.get("participants"), list):
            participants[round_] = [str(name) for name in entry["participants"]]
        spent = reader.obj(entry.get("privacy") or {}, f"rounds[{index}].privacy")
        for name, data in spent.items():
            where = f"rounds[{index}].privacy[{name!r}]"
            records.setdefault(name, []).append(reader.record(round_, data, where))
    for site_records in records.values():
        site_records.sort(key=lambda record: record.round)
    return RunPrivacyRecords(
        run_name=run_name,
        sample_level=sample_level,
        central=central,
        sites=sites,
        data_fingerprints=fingerprints,
        records=records,
        participants=participants,
    )
