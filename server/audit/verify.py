"""What `consortia audit verify PATH` checks: an audit log file, a run folder (its
`audit.jsonl`, its signed `provenance.json` and its checkpoints) or a node state folder
(its `audit.jsonl`). docs/auditing.md explains the checks and their limits.

Unreadable input (no such path, no audit log in the folder, a key or certificate file
that cannot be loaded) raises a `ConsortiaError`; everything found wrong in readable
input is a problem in the `VerifyReport`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from consortia.common.audit.log import (
    AUDIT_LOG_FILE,
    CHECKPOINT_SAVED,
    GLOBAL_MODEL,
    AuditLogError,
    AuditReport,
    node_log_label,
    server_log_label,
    verify_audit_log,
)
from consortia.common.audit.provenance import (
    PROVENANCE_FILE,
    ProvenanceError,
    SiteKeys,
    read_provenance,
    structure_problems,
    verify_provenance,
)
from consortia.common.audit.rotation import KeyPeriod
from consortia.common.crypto.certificates import check_is_ca, load_certificate
from consortia.common.crypto.site_keys import load_site_public_key
from consortia.common.files import sha256_file
from consortia.server.run.folder import CHECKPOINT_DIR, RESULTS_FILE

__all__ = [
    "VERDICT_ALTERED",
    "VERDICT_INTACT",
    "VERDICT_NOT_VERIFIED",
    "VERIFY_SCHEMA",
    "TrustAnchors",
    "VerifyReport",
    "load_ca_certificate",
    "load_server_certificates",
    "parse_site_keys",
    "verify_path",
]

VERIFY_SCHEMA = "consortia.audit-verify/2"
VERDICT_INTACT = "INTACT"
VERDICT_NOT_VERIFIED = "NOT VERIFIED"
VERDICT_ALTERED = "ALTERED OR DAMAGED"
#: An honest server writes `finished_at` just after the log's last record.
_CLOCK_SLACK_S = 2.0
SERVER_LABEL_PREFIX = server_log_label("")
NODE_LABEL_PREFIX = node_log_label("")


@dataclass
class VerifyReport:
    """The verdict on one PATH: `problems` empty means intact; `notes` say what could not
    be checked."""

    path: Path
    kind: str  # "audit log", "run folder" or "node state folder"
    log: AuditReport | None = None
    provenance_file: Path | None = None
    signers: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # What could not be verified for lack of the auditor's trust anchors (the CA, the
    # sites' registered keys): nothing found altered, but not vouched for either.
    unverified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verified(self) -> bool:
        """Intact and every signature checked against a trust anchor."""
        return self.ok and not self.unverified

    @property
    def verdict(self) -> str:
        """INTACT, NOT VERIFIED or ALTERED (what `audit verify` prints and its exit code
        follows: 0, 3, 1)."""
        if not self.ok:
            return VERDICT_ALTERED
        return VERDICT_NOT_VERIFIED if self.unverified else VERDICT_INTACT

    def add_log(self, log: AuditReport) -> None:
        """Take the log's report; its problems and notes, prefixed with its file name."""
        self.log = log
        self.problems[:0] = [f"{log.path.name}: {problem}" for problem in log.problems]
        self.notes[:0] = [f"{log.path.name}: {note}" for note in log.notes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": VERIFY_SCHEMA,
            "path": str(self.path),
            "kind": self.kind,
            "ok": self.ok,
            "verdict": self.verdict,
            "problems": list(self.problems),
            "unverified": list(self.unverified),
            "notes": list(self.notes),
            "audit_log": None if self.log is None else self.log.to_dict(),
            "provenance": None
            if self.provenance_file is None
            else {"file": str(self.provenance_file), "signers": list(self.signers)},
        }


@dataclass(frozen=True)
class TrustAnchors:
    """What the auditor vouches for: the CA, the sites' registered keys (or key
    histories) and every certificate the CA issued to the server (rotation, F8)."""

    ca_cert: x509.Certificate | None = None
    site_keys: SiteKeys | None = None
    server_certs: Sequence[x509.Certificate] | None = None


def load_ca_certificate(path: Path) -> x509.Certificate:
    """The consortium CA's certificate (PEM); `PKIError` naming the file otherwise."""
    certificate = load_certificate(path)
    check_is_ca(certificate, path)
    return certificate


def load_server_certificates(paths: Sequence[Path]) -> list[x509.Certificate]:
    """`--server-cert` files: every certificate the CA issued to the server (PEM)."""
    return [load_certificate(path) for path in paths]


def _key_spec(spec: str) -> tuple[str, Path, datetime | None]:
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ProvenanceError(f"--site-key {spec!r}: expected NAME=PUBLIC_KEY_FILE[@SINCE]")
    file, at, when = rest.rpartition("@")
    if not at:
        return name, Path(rest), None
    since = _parse_time(when)
    if since is None:
        raise ProvenanceError(
            f"--site-key {spec!r}: {when!r} is not an ISO time (the registry's registered_at)"
        )
    return name, Path(file), since


def parse_site_keys(specs: Sequence[str]) -> dict[str, list[KeyPeriod]]:
    """`NAME=PUB.pub[@SINCE]` arguments as site -> the keys it registered. A site given
    several keys (a rotation, F8) needs `@SINCE` (when the key was registered, as the
    site registry's `registered_at` says) on every key but its first."""
    keys: dict[str, list[KeyPeriod]] = {}
    for spec in specs:
        name, file, since = _key_spec(spec)
        keys.setdefault(name, []).append(KeyPeriod(load_site_public_key(file), since))
    for name, periods in keys.items():
        if sum(period.since is None for period in periods) > 1 or (
            len(periods) > 1 and len({period.since for period in periods}) < len(periods)
        ):
            raise ProvenanceError(
                f"--site-key: site {name!r} is given {len(periods)} keys; give each key "
                "but its first an @SINCE time (when it was registered), all different"
            )
    return keys


def _log_label(path: Path) -> str | None:
    """The label in a log's first record, without verifying anything."""
    try:
        with path.open("rb") as handle:
            first = json.loads(handle.readline())
    except (OSError, ValueError):
        return None
    label = first.get("label") if isinstance(first, dict) else None
    return label if isinstance(label, str) else None


def _load_provenance(path: Path, report: VerifyReport) -> dict[str, Any] | None:
    """The document, or None with a problem when it is not a provenance document."""
    report.provenance_file = path
    try:
        document = read_provenance(path)
    except ProvenanceError as err:
        if not path.is_file():
            raise
        report.problems.append(str(err))
        return None
    signatures = document.get("signatures")
    if isinstance(signatures, list):
        report.signers = [str(s.get("signer")) for s in signatures if isinstance(s, dict)]
    return document


def _check_provenance(
    document: Mapping[str, Any],
    report: VerifyReport,
    anchors: TrustAnchors,
) -> bool:
    """Signatures; True when the content can be used for the further checks."""
    name = report.provenance_file.name if report.provenance_file else PROVENANCE_FILE
    ca_cert, site_keys = anchors.ca_cert, anchors.site_keys
    problems = verify_provenance(
        document, ca_cert=ca_cert, site_keys=site_keys, server_certs=anchors.server_certs
    )
    report.problems.extend(f"{name}: {problem}" for problem in problems)

    if ca_cert is None:
        # Without the CA, anyone could have rewritten the log and signed a new provenance
        # with a certificate of their own: nothing vouches for the content.
        report.unverified.append(
            f"{name}: who signed it is unknown: the server certificate was not checked "
            "against the consortium CA (pass --ca CA.pem)"
        )
    sites = [
        signer.removeprefix("site:") for signer in report.signers if signer.startswith("site:")
    ]
    if not sites:
        report.notes.append(f"{name}: no site has countersigned it")
    if site_keys is None:
        # Any key makes a valid "site:X" countersignature: only the registered key counts.
        report.unverified.extend(
            f"{name}: the countersignature of site {site} was not checked against its "
            f"registered key (pass --site-key {site}={site}.pub)"
            for site in sites
        )
    return not structure_problems(document.get("provenance"))


def _check_model_hashes(
    run_dir: Path | None, provenance: Mapping[str, Any], log: AuditReport, report: VerifyReport
) -> None:
    """Each round's model hash against the log's record and its checkpoint file."""
    logged = {  # the last record of a round counts (a resumed run may redo a round)
        r.get("round"): r.get("sha256")
        for r in log.records
        if r.get("event") in (GLOBAL_MODEL, CHECKPOINT_SAVED)
    }
    for entry in provenance["rounds"]:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("round"), int):
            report.problems.append(f"{PROVENANCE_FILE}: a rounds[] entry without a round number")
            continue
        number, expected = entry["round"], entry.get("global_model_sha256")
        if number in logged and logged[number] != expected:
            report.problems.append(
                f"round {number}: the audit log's global model hash {str(logged[number])[:12]}… "
                f"differs from the provenance's {str(expected)[:12]}…"
            )
        if run_dir is None:
            continue
        relative = f"{CHECKPOINT_DIR}/round-{number:03d}.pt"
        checkpoint = run_dir / relative
        if not checkpoint.is_file():
            report.notes.append(f"{relative}: not present, its model hash was not checked")
        elif sha256_file(checkpoint) != expected:
            report.problems.append(
                f"{relative}: its SHA-256 differs from the provenance's global_model_sha256 "
                "(the checkpoint was replaced or altered)"
            )


def _check_server_log(
    log_path: Path,
    provenance: Mapping[str, Any] | None,
    report: VerifyReport,
    run_dir: Path | None,
) -> None:
    """A run's server log, against the (structurally valid) provenance when given."""
    if provenance is None:
        log = verify_audit_log(log_path)
        report.add_log(log)
        if not str(log.label).startswith(SERVER_LABEL_PREFIX):
            report.problems.append(f"{log_path.name}: labelled {log.label!r}, not a server run log")
        return
    audit = provenance["audit_log"]
    log = verify_audit_log(
        log_path,
        expected_head=audit["head"],
        expected_label=server_log_label(provenance["run_id"]),
    )
    report.add_log(log)
    if audit["records"] != len(log.records):
        report.problems.append(
            f"{PROVENANCE_FILE}: records {audit['records']} audit records, {log_path.name} has "
            f"{len(log.records)}"
        )
    _check_signing_time(provenance, log, report)
    _check_model_hashes(run_dir, provenance, log, report)


def _check_signing_time(
    provenance: Mapping[str, Any], log: AuditReport, report: VerifyReport
) -> None:
    """The server signs when the run ends, after the log's last record: a `finished_at`
    before that record is back-dated (e.g. to a time the server certificate was valid)."""
    finished = _parse_time(provenance.get("finished_at"))
    last = _parse_time(log.records[-1].get("time")) if log.records else None
    if finished is None or last is None:
        return
    if (last - finished).total_seconds() > _CLOCK_SLACK_S:
        report.problems.append(
            f"{PROVENANCE_FILE}: finished_at {finished.isoformat()} precedes the audit log's "
            f"last record ({last.isoformat()}): the signing time was back-dated"
        )


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _verify_run_folder(
    run_dir: Path,
    report: VerifyReport,
    document: dict[str, Any] | None,
    anchors: TrustAnchors,
    unfinished: bool,
) -> None:
    usable = document is not None and _check_provenance(document, report, anchors)
    provenance = document["provenance"] if document is not None and usable else None
    name = AUDIT_LOG_FILE
    if (
        provenance is not None
        and Path(provenance["audit_log"]["file"]).name == (provenance["audit_log"]["file"])
    ):
        name = provenance["audit_log"]["file"]
    if not (run_dir / name).is_file():
        raise AuditLogError(f"{run_dir}: no audit log {name} in the run folder")
    if document is None:
        message = (
            f"no {PROVENANCE_FILE}: the run did not finish, or it was removed; without it "
            "a removed tail of the audit log cannot be detected"
        )
        if unfinished:
            report.notes.append(message)
        else:
            report.problems.append(f"{message} (--unfinished for a run still in progress)")
    _check_server_log(run_dir / name, provenance, report, run_dir)


def _node_expectations(document: Mapping[str, Any], label: str | None) -> dict[str, str]:
    """The node's audit head as its run's server recorded it, if any."""
    provenance = document.get("provenance")
    if not isinstance(provenance, Mapping) or not str(label).startswith(NODE_LABEL_PREFIX):
        return {}
    site = str(label).removeprefix(NODE_LABEL_PREFIX)
    for participant in provenance.get("participants", []):
        head = participant.get("audit_head") if isinstance(participant, Mapping) else None
        if participant.get("site") == site and isinstance(head, str):
            return {head: f"the provenance of run {provenance.get('run_id')}"}
    return {}


def verify_path(
    path: Path,
    *,
    ca_cert: x509.Certificate | None = None,
    site_keys: SiteKeys | None = None,
    server_certs: Sequence[x509.Certificate] | None = None,
    provenance_path: Path | None = None,
    unfinished: bool = False,
) -> VerifyReport:
    """Verify an audit log file, a run folder or a node state folder (see module doc).

    `provenance_path`: a signed provenance to check the log against (for a run folder its
    own `provenance.json` is used when not given; for a node's log, the node's audit head
    as recorded in that provenance must be in the log). A run folder without its signed
    provenance is a problem unless `unfinished` (a run still in progress). `server_certs`:
    every certificate the CA issued to the server, to check rotation (needs `ca_cert`)."""
    if not path.exists():
        raise AuditLogError(f"{path}: no such file or folder")
    if server_certs is not None and ca_cert is None:
        raise ProvenanceError("--server-cert needs --ca: the history is checked against the CA")
    anchors = TrustAnchors(ca_cert, site_keys, server_certs)
    is_run = path.is_dir() and ((path / PROVENANCE_FILE).exists() or (path / RESULTS_FILE).exists())
    kind = "audit log" if path.is_file() else "run folder" if is_run else "node state folder"
    report = VerifyReport(path=path, kind=kind)
    if provenance_path is None and is_run and (path / PROVENANCE_FILE).exists():
        provenance_path = path / PROVENANCE_FILE
    document = None if provenance_path is None else _load_provenance(provenance_path, report)
    if is_run:
        _verify_run_folder(path, report, document, anchors, unfinished)
        return report
    log_path = path if path.is_file() else path / AUDIT_LOG_FILE
    if not log_path.is_file():
        raise AuditLogError(f"{path}: no {AUDIT_LOG_FILE} in this folder (not a node state dir)")
    label = str(_log_label(log_path))
    usable = document is not None and _check_provenance(document, report, anchors)
    if label.startswith(SERVER_LABEL_PREFIX) and (usable or document is None):
        _check_server_log(log_path, document["provenance"] if document else None, report, None)
        return report
    expected = _node_expectations(document, label) if document is not None and usable else {}
    if usable and not expected:
        report.notes.append(f"{provenance_path}: records no audit head for this node's log")
    log = verify_audit_log(log_path, expected_hashes=expected)
    report.add_log(log)
    if kind == "node state folder" and not str(log.label).startswith(NODE_LABEL_PREFIX):
        report.problems.append(f"{log_path.name}: labelled {log.label!r}, not a node log")
    if document is None and log.ok:
        report.notes.append(
            "records removed from the end of the log cannot be detected from the log alone: "
            "compare with a signed provenance (--provenance) or an earlier copy"
        )
    return report
