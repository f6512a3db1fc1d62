"""The node's own audit log: one hash-chained JSON-lines file in its state folder,
across runs (what it approved or refused, each update it sent, its privacy spending)."""

from __future__ import annotations

from consortia.common.audit_log import AUDIT_LOG_FILE, AuditLog, node_log_label
from consortia.common.settings import SiteSettings

__all__ = ["node_audit_for"]


def node_audit_for(site: SiteSettings) -> AuditLog:
    """The audit log of `site`'s node (created on first use)."""
    site.state_path.mkdir(parents=True, exist_ok=True)
    return AuditLog.open(site.state_path / AUDIT_LOG_FILE, node_log_label(site.site.name))
