"""Tamper-evident records: hash-chained audit logs, their checks, signed provenance and a site's
approvals.

The modules, one concept each:

- ``approvals``: The runs a hospital has approved, kept by its node in `<state
  dir>/approvals.json`.
- ``check``: Reading and checking audit logs (the format `consortia.common.audit.log` writes).
- ``log``: Append-only, hash-chained audit logs in JSON lines, timestamps in UTC.
- ``provenance``: A run's signed provenance: who took part, with what data, settings and code,
  which global model each round produced, and where the run's audit log ended.
- ``rotation``: Key and certificate rotation for the auditor: which server certificate or site
  key may have signed a provenance at its signing time (red-team F8).
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.common.audit.approvals import (
        APPROVALS_FILE as APPROVALS_FILE,
    )
    from consortia.common.audit.approvals import (
        APPROVE_COMMAND as APPROVE_COMMAND,
    )
    from consortia.common.audit.approvals import (
        Approval as Approval,
    )
    from consortia.common.audit.approvals import (
        ApprovalStore as ApprovalStore,
    )
    from consortia.common.audit.approvals import (
        RunNotApprovedError as RunNotApprovedError,
    )
    from consortia.common.audit.check import (
        LOG_OPENED as LOG_OPENED,
    )
    from consortia.common.audit.check import (
        RESERVED_FIELDS as RESERVED_FIELDS,
    )
    from consortia.common.audit.check import (
        TORN_TAIL_SET_ASIDE as TORN_TAIL_SET_ASIDE,
    )
    from consortia.common.audit.check import (
        AuditLogError as AuditLogError,
    )
    from consortia.common.audit.check import (
        AuditReport as AuditReport,
    )
    from consortia.common.audit.check import (
        ChainChecker as ChainChecker,
    )
    from consortia.common.audit.check import (
        audit_hashes as audit_hashes,
    )
    from consortia.common.audit.check import (
        parse_line as parse_line,
    )
    from consortia.common.audit.check import (
        read_audit_log as read_audit_log,
    )
    from consortia.common.audit.check import (
        shared_lock as shared_lock,
    )
    from consortia.common.audit.check import (
        short as short,
    )
    from consortia.common.audit.check import (
        utc_time_problem as utc_time_problem,
    )
    from consortia.common.audit.check import (
        verify_audit_log as verify_audit_log,
    )
    from consortia.common.audit.log import (
        AGGREGATED as AGGREGATED,
    )
    from consortia.common.audit.log import (
        AUDIT_LOG_FILE as AUDIT_LOG_FILE,
    )
    from consortia.common.audit.log import (
        CHECKPOINT_SAVED as CHECKPOINT_SAVED,
    )
    from consortia.common.audit.log import (
        EVALUATION_SENT as EVALUATION_SENT,
    )
    from consortia.common.audit.log import (
        GLOBAL_MODEL as GLOBAL_MODEL,
    )
    from consortia.common.audit.log import (
        NODE_STARTED as NODE_STARTED,
    )
    from consortia.common.audit.log import (
        PRIVACY_SPENT as PRIVACY_SPENT,
    )
    from consortia.common.audit.log import (
        PROVENANCE_COUNTERSIGNED as PROVENANCE_COUNTERSIGNED,
    )
    from consortia.common.audit.log import (
        ROUND_STARTED as ROUND_STARTED,
    )
    from consortia.common.audit.log import (
        RUN_APPROVED as RUN_APPROVED,
    )
    from consortia.common.audit.log import (
        RUN_FAILED as RUN_FAILED,
    )
    from consortia.common.audit.log import (
        RUN_FINISHED as RUN_FINISHED,
    )
    from consortia.common.audit.log import (
        RUN_REFUSED as RUN_REFUSED,
    )
    from consortia.common.audit.log import (
        RUN_RESUMED as RUN_RESUMED,
    )
    from consortia.common.audit.log import (
        RUN_STARTED as RUN_STARTED,
    )
    from consortia.common.audit.log import (
        RUN_STOPPED as RUN_STOPPED,
    )
    from consortia.common.audit.log import (
        SITE_JOINED as SITE_JOINED,
    )
    from consortia.common.audit.log import (
        SITE_LEFT_OUT as SITE_LEFT_OUT,
    )
    from consortia.common.audit.log import (
        SITE_REFUSED as SITE_REFUSED,
    )
    from consortia.common.audit.log import (
        SITE_REJOINED as SITE_REJOINED,
    )
    from consortia.common.audit.log import (
        UPDATE_RECEIVED as UPDATE_RECEIVED,
    )
    from consortia.common.audit.log import (
        UPDATE_REJECTED as UPDATE_REJECTED,
    )
    from consortia.common.audit.log import (
        UPDATE_SENT as UPDATE_SENT,
    )
    from consortia.common.audit.log import (
        UPDATE_VERIFIED as UPDATE_VERIFIED,
    )
    from consortia.common.audit.log import (
        AuditLog as AuditLog,
    )
    from consortia.common.audit.log import (
        node_log_label as node_log_label,
    )
    from consortia.common.audit.log import (
        server_log_label as server_log_label,
    )
    from consortia.common.audit.provenance import (
        PROVENANCE_FILE as PROVENANCE_FILE,
    )
    from consortia.common.audit.provenance import (
        PROVENANCE_SCHEMA as PROVENANCE_SCHEMA,
    )
    from consortia.common.audit.provenance import (
        SIGNATURE_ALGORITHM as SIGNATURE_ALGORITHM,
    )
    from consortia.common.audit.provenance import (
        Provenance as Provenance,
    )
    from consortia.common.audit.provenance import (
        ProvenanceError as ProvenanceError,
    )
    from consortia.common.audit.provenance import (
        SiteKeys as SiteKeys,
    )
    from consortia.common.audit.provenance import (
        canonical_provenance as canonical_provenance,
    )
    from consortia.common.audit.provenance import (
        countersign as countersign,
    )
    from consortia.common.audit.provenance import (
        provenance_sha256 as provenance_sha256,
    )
    from consortia.common.audit.provenance import (
        read_provenance as read_provenance,
    )
    from consortia.common.audit.provenance import (
        sign_provenance as sign_provenance,
    )
    from consortia.common.audit.provenance import (
        structure_problems as structure_problems,
    )
    from consortia.common.audit.provenance import (
        verify_provenance as verify_provenance,
    )
    from consortia.common.audit.provenance import (
        write_provenance as write_provenance,
    )
    from consortia.common.audit.rotation import (
        KeyPeriod as KeyPeriod,
    )
    from consortia.common.audit.rotation import (
        server_rotation_problems as server_rotation_problems,
    )
    from consortia.common.audit.rotation import (
        site_rotation_problems as site_rotation_problems,
    )

__all__ = [
    "AGGREGATED",
    "APPROVALS_FILE",
    "APPROVE_COMMAND",
    "AUDIT_LOG_FILE",
    "CHECKPOINT_SAVED",
    "EVALUATION_SENT",
    "GLOBAL_MODEL",
    "LOG_OPENED",
    "NODE_STARTED",
    "PRIVACY_SPENT",
    "PROVENANCE_COUNTERSIGNED",
    "PROVENANCE_FILE",
    "PROVENANCE_SCHEMA",
    "RESERVED_FIELDS",
    "ROUND_STARTED",
    "RUN_APPROVED",
    "RUN_FAILED",
    "RUN_FINISHED",
    "RUN_REFUSED",
    "RUN_RESUMED",
    "RUN_STARTED",
    "RUN_STOPPED",
    "SIGNATURE_ALGORITHM",
    "SITE_JOINED",
    "SITE_LEFT_OUT",
    "SITE_REFUSED",
    "SITE_REJOINED",
    "TORN_TAIL_SET_ASIDE",
    "UPDATE_RECEIVED",
    "UPDATE_REJECTED",
    "UPDATE_SENT",
    "UPDATE_VERIFIED",
    "Approval",
    "ApprovalStore",
    "AuditLog",
    "AuditLogError",
    "AuditReport",
    "ChainChecker",
    "KeyPeriod",
    "Provenance",
    "ProvenanceError",
    "RunNotApprovedError",
    "SiteKeys",
    "audit_hashes",
    "canonical_provenance",
    "countersign",
    "node_log_label",
    "parse_line",
    "provenance_sha256",
    "read_audit_log",
    "read_provenance",
    "server_log_label",
    "server_rotation_problems",
    "shared_lock",
    "short",
    "sign_provenance",
    "site_rotation_problems",
    "structure_problems",
    "utc_time_problem",
    "verify_audit_log",
    "verify_provenance",
    "write_provenance",
]

_EXPORTS = {
    "AGGREGATED": "log",
    "APPROVALS_FILE": "approvals",
    "APPROVE_COMMAND": "approvals",
    "AUDIT_LOG_FILE": "log",
    "Approval": "approvals",
    "ApprovalStore": "approvals",
    "AuditLog": "log",
    "AuditLogError": "check",
    "AuditReport": "check",
    "CHECKPOINT_SAVED": "log",
    "ChainChecker": "check",
    "EVALUATION_SENT": "log",
    "GLOBAL_MODEL": "log",
    "KeyPeriod": "rotation",
    "LOG_OPENED": "check",
    "NODE_STARTED": "log",
    "PRIVACY_SPENT": "log",
    "PROVENANCE_COUNTERSIGNED": "log",
    "PROVENANCE_FILE": "provenance",
    "PROVENANCE_SCHEMA": "provenance",
    "Provenance": "provenance",
    "ProvenanceError": "provenance",
    "RESERVED_FIELDS": "check",
    "ROUND_STARTED": "log",
    "RUN_APPROVED": "log",
    "RUN_FAILED": "log",
    "RUN_FINISHED": "log",
    "RUN_REFUSED": "log",
    "RUN_RESUMED": "log",
    "RUN_STARTED": "log",
    "RUN_STOPPED": "log",
    "RunNotApprovedError": "approvals",
    "SIGNATURE_ALGORITHM": "provenance",
    "SITE_JOINED": "log",
    "SITE_LEFT_OUT": "log",
    "SITE_REFUSED": "log",
    "SITE_REJOINED": "log",
    "SiteKeys": "provenance",
    "TORN_TAIL_SET_ASIDE": "check",
    "UPDATE_RECEIVED": "log",
    "UPDATE_REJECTED": "log",
    "UPDATE_SENT": "log",
    "UPDATE_VERIFIED": "log",
    "audit_hashes": "check",
    "canonical_provenance": "provenance",
    "countersign": "provenance",
    "node_log_label": "log",
    "parse_line": "check",
    "provenance_sha256": "provenance",
    "read_audit_log": "check",
    "read_provenance": "provenance",
    "server_log_label": "log",
    "server_rotation_problems": "rotation",
    "shared_lock": "check",
    "short": "check",
    "sign_provenance": "provenance",
    "site_rotation_problems": "rotation",
    "structure_problems": "provenance",
    "utc_time_problem": "check",
    "verify_audit_log": "check",
    "verify_provenance": "provenance",
    "write_provenance": "provenance",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
