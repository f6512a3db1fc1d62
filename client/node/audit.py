"""The node's own audit log: one hash-chained JSON-lines file in its state folder,
across runs (what it approved or refused, each update it sent, its privacy spending)."""

from __future__ import annotations

from dataclasses import dataclass

from consortia.common.audit.log import (
    AUDIT_LOG_FILE,
    PRIVACY_SPENT,
    AuditLog,
    AuditLogError,
    node_log_label,
    read_audit_log,
)
from consortia.common.config.settings import SiteSettings

__all__ = ["RecordedSpending", "node_audit_for", "recorded_spending"]


def node_audit_for(site: SiteSettings) -> AuditLog:
    """The audit log of `site`'s node (created on first use)."""
    site.state_path.mkdir(parents=True, exist_ok=True)
    return AuditLog.open(site.state_path / AUDIT_LOG_FILE, node_log_label(site.site.name))


@dataclass(frozen=True)
class RecordedSpending:
    """What the node's audit log records of the DP rounds trained on one data set: how
    many `privacy_spent` records, and the data set's epsilon and the record's `seq` in
    the last of them (0.0 and -1 when there is none)."""

    rounds: int
    epsilon: float
    last_seq: int


def recorded_spending(site: SiteSettings, dataset_fingerprint: str) -> RecordedSpending:
    """The `privacy_spent` records of one data set in `site`'s node audit log, after
    checking the log's whole hash chain. No log yet: nothing recorded. A broken log raises
    `AuditLogError` naming the file and the first problem."""
    path = site.state_path / AUDIT_LOG_FILE
    if not path.exists():
        return RecordedSpending(0, 0.0, -1)
    rounds, epsilon, last_seq = 0, 0.0, -1
    for record in read_audit_log(path):
        if record.get("event") != PRIVACY_SPENT:
            continue
        if record.get("dataset_fingerprint") != dataset_fingerprint:
            continue
        value = record.get("epsilon")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AuditLogError(f"{path}: record {record.get('seq')}: epsilon is not a number")
        rounds, epsilon = rounds + 1, float(value)
        last_seq = int(record.get("seq", -1))
    return RecordedSpending(rounds, epsilon, last_seq)
