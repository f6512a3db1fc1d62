"""The auditor's side: verifying audit logs and run folders, and the privacy audit of a run.

The modules, one concept each:

- ``cli``: The auditor's commands.
- ``privacy_audit``: The privacy audit of a run: every site's epsilon per round, checked against
  the site's own ledger and recomputed independently with dp-accounting.
- ``privacy_recompute``: Independent recomputation of DP-SGD epsilon with Google's dp-accounting
  package.
- ``privacy_results``: The privacy records of a run folder's `results.json`, read for the audit.
- ``verify``: What `consortia audit verify PATH` checks: an audit log file, a run folder (its
  `audit.jsonl`, its signed `provenance.json` and its checkpoints) or a node state folder (its
  `audit.jsonl`).
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.audit.privacy_audit import (
        AUDIT_SCHEMA as AUDIT_SCHEMA,
    )
    from consortia.server.audit.privacy_audit import (
        EPSILON_TOLERANCE as EPSILON_TOLERANCE,
    )
    from consortia.server.audit.privacy_audit import (
        PARAM_TOLERANCE as PARAM_TOLERANCE,
    )
    from consortia.server.audit.privacy_audit import (
        PLD_TOLERANCE as PLD_TOLERANCE,
    )
    from consortia.server.audit.privacy_audit import (
        RDP_TOLERANCE as RDP_TOLERANCE,
    )
    from consortia.server.audit.privacy_audit import (
        Flag as Flag,
    )
    from consortia.server.audit.privacy_audit import (
        LedgerAudit as LedgerAudit,
    )
    from consortia.server.audit.privacy_audit import (
        LedgerEntryAudit as LedgerEntryAudit,
    )
    from consortia.server.audit.privacy_audit import (
        PrivacyAudit as PrivacyAudit,
    )
    from consortia.server.audit.privacy_audit import (
        RoundAudit as RoundAudit,
    )
    from consortia.server.audit.privacy_audit import (
        SiteAudit as SiteAudit,
    )
    from consortia.server.audit.privacy_audit import (
        audit_privacy as audit_privacy,
    )
    from consortia.server.audit.privacy_recompute import (
        VALUE_DISCRETIZATION_INTERVAL as VALUE_DISCRETIZATION_INTERVAL,
    )
    from consortia.server.audit.privacy_recompute import (
        Recomputed as Recomputed,
    )
    from consortia.server.audit.privacy_recompute import (
        Recomputer as Recomputer,
    )
    from consortia.server.audit.privacy_recompute import (
        dp_event_of as dp_event_of,
    )
    from consortia.server.audit.privacy_recompute import (
        pld_epsilon as pld_epsilon,
    )
    from consortia.server.audit.privacy_recompute import (
        rdp_epsilon as rdp_epsilon,
    )
    from consortia.server.audit.privacy_results import (
        RunPrivacyRecords as RunPrivacyRecords,
    )
    from consortia.server.audit.privacy_results import (
        SpentRound as SpentRound,
    )
    from consortia.server.audit.privacy_results import (
        read_run_records as read_run_records,
    )
    from consortia.server.audit.privacy_results import (
        spent_of_ledger_entry as spent_of_ledger_entry,
    )
    from consortia.server.audit.verify import (
        VERDICT_ALTERED as VERDICT_ALTERED,
    )
    from consortia.server.audit.verify import (
        VERDICT_INTACT as VERDICT_INTACT,
    )
    from consortia.server.audit.verify import (
        VERDICT_NOT_VERIFIED as VERDICT_NOT_VERIFIED,
    )
    from consortia.server.audit.verify import (
        VERIFY_SCHEMA as VERIFY_SCHEMA,
    )
    from consortia.server.audit.verify import (
        TrustAnchors as TrustAnchors,
    )
    from consortia.server.audit.verify import (
        VerifyReport as VerifyReport,
    )
    from consortia.server.audit.verify import (
        load_ca_certificate as load_ca_certificate,
    )
    from consortia.server.audit.verify import (
        load_server_certificates as load_server_certificates,
    )
    from consortia.server.audit.verify import (
        parse_site_keys as parse_site_keys,
    )
    from consortia.server.audit.verify import (
        verify_path as verify_path,
    )

__all__ = [
    "AUDIT_SCHEMA",
    "EPSILON_TOLERANCE",
    "PARAM_TOLERANCE",
    "PLD_TOLERANCE",
    "RDP_TOLERANCE",
    "VALUE_DISCRETIZATION_INTERVAL",
    "VERDICT_ALTERED",
    "VERDICT_INTACT",
    "VERDICT_NOT_VERIFIED",
    "VERIFY_SCHEMA",
    "Flag",
    "LedgerAudit",
    "LedgerEntryAudit",
    "PrivacyAudit",
    "Recomputed",
    "Recomputer",
    "RoundAudit",
    "RunPrivacyRecords",
    "SiteAudit",
    "SpentRound",
    "TrustAnchors",
    "VerifyReport",
    "audit_privacy",
    "dp_event_of",
    "load_ca_certificate",
    "load_server_certificates",
    "parse_site_keys",
    "pld_epsilon",
    "rdp_epsilon",
    "read_run_records",
    "spent_of_ledger_entry",
    "verify_path",
]

_EXPORTS = {
    "AUDIT_SCHEMA": "privacy_audit",
    "EPSILON_TOLERANCE": "privacy_audit",
    "Flag": "privacy_audit",
    "LedgerAudit": "privacy_audit",
    "LedgerEntryAudit": "privacy_audit",
    "PARAM_TOLERANCE": "privacy_audit",
    "PLD_TOLERANCE": "privacy_audit",
    "PrivacyAudit": "privacy_audit",
    "RDP_TOLERANCE": "privacy_audit",
    "Recomputed": "privacy_recompute",
    "Recomputer": "privacy_recompute",
    "RoundAudit": "privacy_audit",
    "RunPrivacyRecords": "privacy_results",
    "SiteAudit": "privacy_audit",
    "SpentRound": "privacy_results",
    "TrustAnchors": "verify",
    "VALUE_DISCRETIZATION_INTERVAL": "privacy_recompute",
    "VERDICT_ALTERED": "verify",
    "VERDICT_INTACT": "verify",
    "VERDICT_NOT_VERIFIED": "verify",
    "VERIFY_SCHEMA": "verify",
    "VerifyReport": "verify",
    "audit_privacy": "privacy_audit",
    "dp_event_of": "privacy_recompute",
    "load_ca_certificate": "verify",
    "load_server_certificates": "verify",
    "parse_site_keys": "verify",
    "pld_epsilon": "privacy_recompute",
    "rdp_epsilon": "privacy_recompute",
    "read_run_records": "privacy_results",
    "spent_of_ledger_entry": "privacy_results",
    "verify_path": "verify",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
