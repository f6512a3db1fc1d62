"""The privacy records of a run folder's `results.json`, read for the audit.

`read_run_records` takes the `privacy` section and every round's `privacy` object from
the typed run record (`consortia.server.run.record.RunRecord`, docs/results-schema.md),
or raises `ConsortiaError` naming the file and the field that is missing or malformed.
It judges nothing: that is the audit's job (`consortia.server.audit.privacy_audit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from consortia.common.errors import ConsortiaError
from consortia.common.privacy.ledger import LedgerEntry, LedgerHead
from consortia.server.run.folder import RESULTS_FILE, read_record
from consortia.server.run.record import (
    CentralPrivacyRecord,
    RoundSpent,
    RunRecord,
    SampleLevelPrivacy,
    SitePrivacyRecord,
)

__all__ = ["RunPrivacyRecords", "SpentRound", "read_run_records", "spent_of_ledger_entry"]


@dataclass(frozen=True)
class SpentRound:
    """What a site reported one round of the run spent (`rounds[i].privacy[name]`)."""

    round: int
    spend: RoundSpent


def spent_of_ledger_entry(entry: LedgerEntry) -> RoundSpent:
    """A ledger entry as the server would have recorded it."""
    return RoundSpent(**entry.spend().model_dump(), num_examples=entry.num_examples)


@dataclass(frozen=True)
class RunPrivacyRecords:
    """Everything the audit needs from `results.json`."""

    run_name: str
    sample_level: SampleLevelPrivacy
    central: CentralPrivacyRecord | None
    sites: dict[str, SitePrivacyRecord]
    data_fingerprints: dict[str, str]
    records: dict[str, list[SpentRound]]
    participants: dict[int, list[str]]
    # Site -> (round, ledger head its train reply carried), per round (`rounds[].ledger_heads`).
    ledger_heads: dict[str, list[tuple[int, LedgerHead]]]

    def site_names(self) -> list[str]:
        """Sites with a privacy policy or privacy records, sorted."""
        return sorted(set(self.sites) | set(self.records))

    def sites_by_fingerprint(self) -> dict[str, str]:
        """Data set fingerprint -> name of a site in `site_names()` (the policy's
        fingerprint first; a held-out site's data set spends no privacy)."""
        names = set(self.site_names())
        found = {fp: name for name, fp in self.data_fingerprints.items() if name in names}
        found.update(
            {
                policy.dataset_fingerprint: name
                for name, policy in self.sites.items()
                if policy.dataset_fingerprint
            }
        )
        return found


def _records(record: RunRecord) -> dict[str, list[SpentRound]]:
    records: dict[str, list[SpentRound]] = {}
    for entry in record.rounds:
        for name, spent in (entry.privacy or {}).items():
            records.setdefault(name, []).append(SpentRound(entry.round, spent))
    for site_records in records.values():
        site_records.sort(key=lambda spent: spent.round)
    return records


def _ledger_heads(record: RunRecord) -> dict[str, list[tuple[int, LedgerHead]]]:
    heads: dict[str, list[tuple[int, LedgerHead]]] = {}
    for entry in record.rounds:
        for site, head in (entry.ledger_heads or {}).items():
            heads.setdefault(site, []).append((entry.round, head.head()))
    return heads


def read_run_records(run_dir: Path) -> RunPrivacyRecords:
    """The privacy records of the run in `run_dir`; `ConsortiaError` if unusable."""
    path = run_dir / RESULTS_FILE
    record = read_record(run_dir, missing=f"no such file (is {run_dir} a run folder?)")
    if not record.run_name:
        raise ConsortiaError(f"{path}: run_name: missing")
    if record.privacy is None:
        raise ConsortiaError(f"{path}: privacy: missing (the run recorded no privacy section)")
    for name, policy in record.privacy.sites.items():
        if not policy.dataset_fingerprint:
            raise ConsortiaError(f"{path}: privacy.sites.{name}.dataset_fingerprint: missing")
    return RunPrivacyRecords(
        run_name=record.run_name,
        sample_level=record.privacy.sample_level,
        central=record.privacy.central,
        sites=dict(record.privacy.sites),
        data_fingerprints={
            site.name: site.data_fingerprint for site in record.sites if site.data_fingerprint
        },
        records=_records(record),
        participants={
            entry.round: list(entry.participants)
            for entry in record.rounds
            if entry.participants is not None
        },
        ledger_heads=_ledger_heads(record),
    )
