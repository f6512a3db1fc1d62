"""The privacy audit of a run: every site's epsilon per round, checked against the site's
own ledger and recomputed independently with dp-accounting. Returns a typed report; the
command `consortia audit privacy` (server/audit/cli.py) prints it.

What is checked (docs/auditing.md explains each flag):

- from the server's records (`results.json`): each round's run epsilon against
  dp-accounting's RDP (within 1% for the "rdp" accountant) and PLD (never below it), the
  site's limit, and that every training participant has a privacy record;
- with the site's ledger (`--ledger`): the ledger's hash chain, every ledger entry's
  lifetime epsilon recomputed from the ledger's whole history up to it (across runs), and
  that every server record of the run has an identical ledger entry and vice versa, and
  that the ledger still holds every head (last entry's hash, entry count) the site's
  train replies carried (`rounds[].ledger_heads`): a ledger cut back or restarted after
  the run is flagged `ledger_head_missing`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from consortia.common.privacy.ledger import LedgerEntry, LedgerError, LedgerHead, PrivacyLedger
from consortia.server.audit.privacy_recompute import (
    VALUE_DISCRETIZATION_INTERVAL,
    Recomputed,
    Recomputer,
)
from consortia.server.audit.privacy_results import (
    RunPrivacyRecords,
    read_run_records,
    spent_of_ledger_entry,
)
from consortia.server.run.record import (
    CentralPrivacyRecord,
    RoundSpent,
    SampleLevelPrivacy,
    SitePrivacyRecord,
)

__all__ = [
    "AUDIT_SCHEMA",
    "EPSILON_TOLERANCE",
    "PARAM_TOLERANCE",
    "PLD_TOLERANCE",
    "RDP_TOLERANCE",
    "Flag",
    "LedgerAudit",
    "LedgerEntryAudit",
    "PrivacyAudit",
    "RoundAudit",
    "SiteAudit",
    "audit_privacy",
]

AUDIT_SCHEMA = "consortia.privacy-audit/1"
RDP_TOLERANCE = 0.01  # our "rdp" epsilon vs dp-accounting's RDP (relative)
PLD_TOLERANCE = 0.01  # how far below dp-accounting's PLD bound a reported epsilon may lie
PARAM_TOLERANCE = 1e-9  # server record vs ledger entry: sigma, q, delta, clipping norm
EPSILON_TOLERANCE = 1e-6  # server record vs ledger entry: epsilons
_FRACTIONAL_ORDERS = 3.0  # below it dp-accounting's RDP bound is looser than Opacus'


@dataclass(frozen=True)
class Flag:
    """Something the auditor must look at; `kind` is one of those in docs/auditing.md."""

    kind: str
    message: str
    site: str | None = None
    round: int | None = None


@dataclass(frozen=True)
class RoundAudit:
    """One round of one site: what was `reported` (by the server's record, `source`
    "server", or, when the server got no update, by the site's ledger: "ledger"), this
    run's epsilon recomputed from the server's records up to the round, and the ledger's
    entry with the lifetime epsilon recomputed from the ledger's history up to it."""

    round: int
    source: str
    reported: RoundSpent
    run_recomputed: Recomputed | None
    ledger_epsilon: float | None = None
    lifetime_recomputed: Recomputed | None = None


@dataclass(frozen=True)
class LedgerEntryAudit:
    """One ledger entry with its lifetime epsilon recomputed from the entries up to it."""

    index: int
    run_id: str
    round: int
    epsilon: float
    delta: float
    accountant: str
    recomputed: Recomputed


@dataclass(frozen=True)
class LedgerAudit:
    """A `--ledger` file: `status` is "ok", "invalid", "unmatched" or "duplicate"."""

    path: str
    status: str
    site: str | None
    dataset_fingerprint: str | None
    message: str | None = None
    entries: list[LedgerEntryAudit] = field(default_factory=list)


@dataclass(frozen=True)
class SiteAudit:
    """A training site: the policy it announced, its rounds and its totals after the run
    (`epsilon`: lifetime as reported; `recomputed`: lifetime from its ledger, if given)."""

    name: str
    policy: SitePrivacyRecord | None
    rounds: list[RoundAudit]
    ledger: str | None
    epsilon: float | None
    run_epsilon: float | None
    recomputed: Recomputed | None
    status: str


@dataclass(frozen=True)
class PrivacyAudit:
    """The whole audit. `clean` when nothing is flagged."""

    run_dir: str
    run_name: str
    sample_level: SampleLevelPrivacy
    central: CentralPrivacyRecord | None
    sites: list[SiteAudit]
    ledgers: list[LedgerAudit]
    flags: list[Flag]

    @property
    def clean(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (non-finite numbers become null)."""
        body = asdict(self)
        return _finite(
            {
                "schema": AUDIT_SCHEMA,
                "clean": self.clean,
                "tolerances": {
                    "rdp_relative": RDP_TOLERANCE,
                    "pld_relative": PLD_TOLERANCE,
                    "parameters_relative": PARAM_TOLERANCE,
                    "epsilon_relative": EPSILON_TOLERANCE,
                    "pld_value_discretization_interval": VALUE_DISCRETIZATION_INTERVAL,
                },
                **body,
            }
        )


def _finite(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _finite(value.model_dump(mode="json", exclude_unset=True))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


# -- numeric checks -----------------------------------------------------------------------


def _close(a: float, b: float, relative: float) -> bool:
    return abs(a - b) <= relative * max(abs(a), abs(b)) + 1e-12


def _accuracy_flags(
    reported: float, rec: Recomputed, accountant: str, what: str, site: str, round_: int
) -> list[Flag]:
    """Under-reporting (below PLD) for any accountant; for "rdp" also the 1% rule."""
    if reported < rec.pld * (1 - PLD_TOLERANCE) - 1e-9:
        message = (
            f"{what}: epsilon {reported:.4g} is below dp-accounting's PLD bound "
            f"{rec.pld:.4g} (under-reported)"
        )
        return [Flag("under_reported", message, site, round_)]
    if accountant != "rdp" or _close(reported, rec.rdp, RDP_TOLERANCE):
        return []
    looser_bound = rec.rdp_order is not None and rec.rdp_order < _FRACTIONAL_ORDERS
    if reported < rec.rdp and looser_bound:
        return []  # dp-accounting's fractional-order bound is looser (module docstring)
    gap = (reported - rec.rdp) / rec.rdp if rec.rdp else math.inf
    message = (
        f"{what}: epsilon {reported:.4g} differs from dp-accounting's RDP {rec.rdp:.4g} "
        f"by {gap:+.1%} (tolerance {RDP_TOLERANCE:.0%})"
    )
    return [Flag("rdp_mismatch", message, site, round_)]


def _over_limit(rec: Recomputed, accountant: str, limit: float) -> bool:
    """The recomputation (the accountant's own method) exceeds the limit beyond tolerance;
    PLD counts for every accountant, as no sound accountant reports less."""
    if rec.pld > limit * (1 + PLD_TOLERANCE):
        return True
    exact_rdp = rec.rdp_order is not None and rec.rdp_order >= _FRACTIONAL_ORDERS
    return accountant == "rdp" and exact_rdp and rec.rdp > limit * (1 + RDP_TOLERANCE)


def _differences(record: RoundSpent, entry: LedgerEntry) -> list[str]:
    pairs: list[tuple[str, float, float, float]] = [
        ("noise_multiplier", record.noise_multiplier, entry.noise_multiplier, PARAM_TOLERANCE),
        ("sample_rate", record.sample_rate, entry.sample_rate, PARAM_TOLERANCE),
        ("steps", record.steps, entry.steps, 0.0),
        ("delta", record.delta, entry.delta, PARAM_TOLERANCE),
        ("epsilon", record.epsilon, entry.epsilon, EPSILON_TOLERANCE),
        ("run_epsilon", record.run_epsilon, entry.run_epsilon, EPSILON_TOLERANCE),
    ]
    if record.max_grad_norm is not None:
        pairs.append(("max_grad_norm", record.max_grad_norm, entry.max_grad_norm, PARAM_TOLERANCE))
    if record.num_examples is not None:
        pairs.append(("num_examples", record.num_examples, entry.num_examples, 0.0))
    found = [
        f"{name} {ours:.10g} (server) vs {theirs:.10g} (ledger)"
        for name, ours, theirs, tolerance in pairs
        if not _close(ours, theirs, tolerance)
    ]
    if record.accountant != entry.accountant:
        found.append(f"accountant {record.accountant} (server) vs {entry.accountant} (ledger)")
    return found


# -- ledgers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoadedLedger:
    path: Path
    entries: list[LedgerEntry]
    recomputed: list[Recomputed]  # lifetime epsilon after each entry
    heads: list[LedgerHead]  # every head the ledger has had, from empty to now


def _head_flags(
    name: str, recorded: Sequence[tuple[int, LedgerHead]], ledger: _LoadedLedger
) -> list[Flag]:
    """A head the server recorded that the ledger no longer holds: the ledger was cut
    back, deleted and restarted, or replaced since that reply."""
    held = set(ledger.heads)
    flags = []
    for round_, head in recorded:
        if head in held:
            continue
        message = (
            f"site {name} round {round_}: its reply carried ledger head {head.sha256[:12]}… "
            f"after {head.entries} entries; {ledger.path} (now {len(ledger.entries)} "
            f"entries) never had it: the ledger was cut back, restarted or replaced"
        )
        flags.append(Flag("ledger_head_missing", message, name, round_))
    return flags


def _fingerprint_in_file(path: Path) -> str | None:
    """Best effort, for a ledger that failed to load: which data set it claims to be."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = state.get("dataset_fingerprint") if isinstance(state, dict) else None
    return value if isinstance(value, str) else None


def _audit_ledgers(
    paths: Sequence[Path], by_fingerprint: dict[str, str], recomputer: Recomputer
) -> tuple[list[LedgerAudit], dict[str, _LoadedLedger], list[Flag]]:
    audits: list[LedgerAudit] = []
    loaded: dict[str, _LoadedLedger] = {}
    flags: list[Flag] = []
    for path in paths:
        try:
            ledger = PrivacyLedger.load(path)
            entries = ledger.entries
            recomputed = recomputer.prefixes(
                [entry.history_entry() for entry in entries], [entry.delta for entry in entries]
            )
        except (LedgerError, ValueError) as err:
            fingerprint = _fingerprint_in_file(path)
            site = by_fingerprint.get(fingerprint or "")
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            audits.append(LedgerAudit(str(path), "invalid", site, fingerprint, message))
            flags.append(Flag("ledger_invalid", message, site))
            continue
        site = by_fingerprint.get(ledger.dataset_fingerprint)
        fingerprint = ledger.dataset_fingerprint
        if site is None:
            message = f"{path}: ledger of data set {fingerprint[:12]}…, no site of this run"
            audits.append(LedgerAudit(str(path), "unmatched", None, fingerprint, message))
            flags.append(Flag("ledger_unmatched", message))
            continue
        if site in loaded:
            message = f"{path}: a second ledger for site {site} ({loaded[site].path} first)"
            audits.append(LedgerAudit(str(path), "duplicate", site, fingerprint, message))
            flags.append(Flag("ledger_duplicate", message, site))
            continue
        loaded[site] = _LoadedLedger(path, entries, recomputed, ledger.heads())
        rows: list[LedgerEntryAudit] = []
        seen: set[tuple[str, int]] = set()
        for index, (entry, rec) in enumerate(zip(entries, recomputed, strict=True)):
            what = f"ledger {path.name} entry {index} (run {entry.run_id}, round {entry.round})"
            flags += _accuracy_flags(entry.epsilon, rec, entry.accountant, what, site, entry.round)
            key = (entry.run_id, entry.round)
            if key in seen:
                message = f"{what}: a second entry for this run and round (budget spent twice)"
                flags.append(Flag("ledger_repeated_round", message, site, entry.round))
            seen.add(key)
            rows.append(
                LedgerEntryAudit(
                    index,
                    entry.run_id,
                    entry.round,
                    entry.epsilon,
                    entry.delta,
                    entry.accountant,
                    rec,
                )
            )
        audits.append(LedgerAudit(str(path), "ok", site, fingerprint, None, rows))
    return audits, loaded, flags


# -- sites --------------------------------------------------------------------------------


def _site_rounds(
    name: str, run: RunPrivacyRecords, ledger: _LoadedLedger | None, recomputer: Recomputer
) -> tuple[list[RoundAudit], list[Flag]]:
    """The site's rounds in this run, from the server's records and the site's ledger."""
    spent_rounds = run.records.get(name, [])
    records = [spent.spend for spent in spent_rounds]
    run_recomputed = recomputer.prefixes(
        [record.history_entry() for record in records], [record.delta for record in records]
    )
    in_ledger: dict[tuple[str, int], int] = {}  # the last entry of each (run, round)
    for index, entry in enumerate(ledger.entries if ledger else []):
        in_ledger[(entry.run_id, entry.round)] = index
    flags: list[Flag] = []
    rows: list[RoundAudit] = []
    for spent, rec in zip(spent_rounds, run_recomputed, strict=True):
        record, round_ = spent.spend, spent.round
        where = f"site {name} round {round_}"
        what = f"{where}: run epsilon"
        flags += _accuracy_flags(record.run_epsilon, rec, record.accountant, what, name, round_)
        if record.epsilon < rec.pld * (1 - PLD_TOLERANCE) - 1e-9:
            message = (
                f"{where}: lifetime epsilon {record.epsilon:.4g} is below dp-accounting's PLD "
                f"bound {rec.pld:.4g} for this run's rounds alone (under-reported)"
            )
            flags.append(Flag("under_reported", message, name, round_))
        row = RoundAudit(round_, "server", record, rec)
        key = (run.run_name, round_)
        found = in_ledger.pop(key) if key in in_ledger else None
        if ledger is not None and found is None:
            message = f"{where}: the server recorded this round; the ledger has no entry"
            flags.append(Flag("missing_ledger_entry", message, name, round_))
        elif ledger is not None and found is not None:
            entry, lifetime = ledger.entries[found], ledger.recomputed[found]
            row = replace(row, ledger_epsilon=entry.epsilon, lifetime_recomputed=lifetime)
            differences = _differences(record, entry)
            if differences:
                message = f"{where}: server and ledger differ: " + "; ".join(differences)
                flags.append(Flag("mismatch", message, name, round_))
                what = f"{where}: server's lifetime epsilon"
                flags += _accuracy_flags(
                    record.epsilon, lifetime, record.accountant, what, name, round_
                )
        rows.append(row)
    for (run_id, round_), index in in_ledger.items():
        if ledger is None or run_id != run.run_name:
            continue
        entry = ledger.entries[index]
        message = (
            f"site {name} round {round_}: the ledger spent epsilon (lifetime "
            f"{entry.epsilon:.4g}) but the server recorded no update (lost reply?)"
        )
        flags.append(Flag("unreported_ledger_entry", message, name, round_))
        reported = spent_of_ledger_entry(entry)
        rows.append(
            RoundAudit(round_, "ledger", reported, None, entry.epsilon, ledger.recomputed[index])
        )
    rows.sort(key=lambda row: row.round)
    return rows, flags


def _limit_flags(name: str, limit: float | None, rows: Iterable[RoundAudit]) -> list[Flag]:
    """One flag at the first round where the reported or recomputed epsilon breaks it.
    Without the ledger, this run's rounds alone are a lower bound of the lifetime."""
    if limit is None:
        return []
    for row in rows:
        reported = max(row.reported.epsilon, row.ledger_epsilon or 0.0)
        rec, basis = row.lifetime_recomputed, "lifetime, from the ledger"
        if rec is None:
            rec, basis = row.run_recomputed, "this run's rounds alone"
        by_recomputation = rec is not None and _over_limit(rec, row.reported.accountant, limit)
        if reported > limit or by_recomputation:
            message = (
                f"site {name} round {row.round}: epsilon over the site's limit {limit:g} "
                f"(reported {reported:.4g}"
            )
            if rec is not None:
                message += f"; recomputed ({basis}): RDP {rec.rdp:.4g}, PLD {rec.pld:.4g}"
            message += ")"
            return [Flag("over_limit", message, name, row.round)]
    return []


def _status(flags: Sequence[Flag], policy: SitePrivacyRecord | None) -> str:
    if any(flag.kind == "over_limit" for flag in flags):
        return "over limit"
    if flags:
        return "flagged"
    if policy is not None and policy.excluded:
        return f"excluded: {policy.excluded}"
    return "ok"


# -- the audit ----------------------------------------------------------------------------


def _run_flags(run: RunPrivacyRecords) -> list[Flag]:
    """Findings about the run as a whole, before any site is audited."""
    flags: list[Flag] = []
    enabled = run.sample_level.enabled
    if not enabled:
        message = "sample-level DP-SGD was disabled in this run: no per-example guarantee"
        flags.append(Flag("dp_disabled", message))
    for name in sorted(set(run.records) - set(run.sites)):
        message = f"site {name} has privacy records but no policy in privacy.sites (no limit)"
        flags.append(Flag("unknown_site", message, name))
    for name, policy in sorted(run.sites.items()):
        other = run.data_fingerprints.get(name)
        if other is not None and other != policy.dataset_fingerprint:
            message = (
                f"site {name}: data set {other[:12]}… in sites[] but "
                f"{(policy.dataset_fingerprint or '')[:12]}… in privacy.sites"
            )
            flags.append(Flag("fingerprint_mismatch", message, name))
    if enabled:
        for round_, names in sorted(run.participants.items()):
            for name in names:
                if not any(spent.round == round_ for spent in run.records.get(name, [])):
                    message = f"site {name} round {round_}: trained, but no privacy record"
                    flags.append(Flag("missing_server_record", message, name, round_))
    return flags


def audit_privacy(
    run_dir: Path,
    ledgers: Sequence[Path] = (),
    *,
    recomputer: Recomputer | None = None,
) -> PrivacyAudit:
    """Audit the privacy records of the run in `run_dir` against the given site ledgers.

    Raises `ConsortiaError` naming the file and field when `results.json` is unusable;
    every other finding is a `Flag` in the report."""
    run = read_run_records(run_dir)
    recomputer = recomputer or Recomputer()
    flags = _run_flags(run)
    by_fingerprint = run.sites_by_fingerprint()
    ledger_audits, loaded, ledger_flags = _audit_ledgers(ledgers, by_fingerprint, recomputer)
    flags += ledger_flags
    sites: list[SiteAudit] = []
    for name in run.site_names():
        policy = run.sites.get(name)
        ledger = loaded.get(name)
        rows, site_flags = _site_rounds(name, run, ledger, recomputer)
        if ledger is not None:
            site_flags += _head_flags(name, run.ledger_heads.get(name, []), ledger)
        site_flags += _limit_flags(name, policy.max_epsilon if policy else None, rows)
        flags += site_flags
        last = rows[-1] if rows else None
        sites.append(
            SiteAudit(
                name=name,
                policy=policy,
                rounds=rows,
                ledger=str(ledger.path) if ledger else None,
                epsilon=last.reported.epsilon if last else None,
                run_epsilon=last.reported.run_epsilon if last else None,
                recomputed=last.lifetime_recomputed if last else None,
                status=_status([flag for flag in flags if flag.site == name], policy),
            )
        )
    return PrivacyAudit(
        run_dir=str(run_dir),
        run_name=run.run_name,
        sample_level=run.sample_level,
        central=run.central,
        sites=sites,
        ledgers=ledger_audits,
        flags=flags,
    )
