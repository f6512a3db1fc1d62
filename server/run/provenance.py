"""The provenance file a run leaves behind: what ran (config and code hashes), who took
part, each round's global model hash (round 0 also names the approved warm start, if
any), the DP parameters, whether updates were securely aggregated, and the head of the
audit log, signed with the server's key."""

from __future__ import annotations

import logging
from typing import Any

from consortia.common.audit.provenance import (
    PROVENANCE_FILE,
    Provenance,
    sign_provenance,
    write_provenance,
)
from consortia.common.config.settings import RunSettings
from consortia.common.crypto.certificates import load_server_key
from consortia.common.wire.run_identity import RunIdentity
from consortia.server.registry.server_security import ServerSecurity
from consortia.server.run.folder import RunFolder

__all__ = ["build_provenance", "write_run_provenance"]

logger = logging.getLogger("consortia.server")


def build_provenance(folder: RunFolder, settings: RunSettings, identity: RunIdentity) -> Provenance:
    """The provenance of the run recorded in `folder` (call after `folder.finish`)."""
    record = folder.record
    heads = record.node_audit_heads
    ledger_heads = {name: head.model_dump() for name, head in record.ledger_heads.items()}
    participants = [
        {
            "site": site.name,
            "role": site.role,
            "dataset_fingerprint": site.data_fingerprint,
            **({"audit_head": heads[site.name]} if site.name in heads else {}),
            **({"ledger_head": ledger_heads[site.name]} if site.name in ledger_heads else {}),
        }
        for site in record.sites
    ]
    init = settings.model.init
    rounds = [
        {
            "round": entry.round,
            "global_model_sha256": entry.model_sha256,
            "participants": entry.participants or [],
            # round 0 of a warm start: the approved weights (their hash, as the sites check it)
            **({"init": init.model_dump(mode="json")} if entry.round == 0 and init else {}),
        }
        for entry in record.rounds
        if entry.model_sha256
    ]
    secure_rounds = [entry.round for entry in record.rounds if entry.secure_aggregation]
    privacy: dict[str, Any] = {
        "sample_level": settings.privacy.model_dump(mode="json"),
        "central": settings.central_privacy.model_dump(mode="json"),
        "spent": record.privacy.model_dump(mode="json", exclude_unset=True)
        if record.privacy
        else None,
    }
    return Provenance(
        run_id=folder.path.name,
        run_name=record.run_name or folder.path.name,
        config_hash=identity.config_hash,
        app_hash=identity.app_hash,
        started_at=str(record.started_at),
        finished_at=record.finished_at,
        status=str(record.status),
        participants=participants,
        rounds=rounds,
        privacy=privacy,
        secure_aggregation={
            "enabled": bool(secure_rounds),
            "rounds": secure_rounds,
            "parameters": settings.secure_aggregation.model_dump(mode="json"),
        },
        audit_log={
            "file": folder.audit.path.name,
            "head": folder.audit.head,
            "records": folder.audit.seq + 1,
        },
    )


def write_run_provenance(
    folder: RunFolder,
    settings: RunSettings,
    identity: RunIdentity,
    security: ServerSecurity | None,
) -> None:
    """Write `provenance.json`: signed by the server when it has its key (an insecure
    server writes it unsigned, and `consortia audit verify` says so)."""
    provenance = build_provenance(folder, settings, identity).to_dict()
    if security is None:
        document: dict[str, Any] = {"provenance": provenance, "signatures": []}
    else:
        document = sign_provenance(
            provenance, load_server_key(security.key), security.certificate.read_bytes()
        )
    write_provenance(folder.path / PROVENANCE_FILE, document)
    logger.info("provenance written (%s)", "signed" if security else "unsigned")
