"""Key and certificate rotation for the auditor: which server certificate or site key
may have signed a provenance at its signing time (red-team F8).

A server certificate is replaced by issuing a new one from the consortium CA (`consortia
certs server`); from the new certificate's `notBefore` on, the old one must not sign. A
site's key is replaced with `consortia site register --replace`; the registry's
`registered_at` is when the new key took over. The auditor gives the history (every
certificate the CA issued to the server, every key a site registered, with the time it
was registered) and `audit verify` checks, for the provenance's signing time (its
`finished_at`, itself bounded below by the audit log's last record):

- the server signature: its certificate is one of the history, every certificate of the
  history is issued by the CA, and no later certificate of the history had taken over
  at signing time (an old key signing after the rotation is flagged; an old key signing
  before it is fine);
- a countersignature: its key is one the site registered, and it had not been replaced
  before the run ended (a site countersigns after the run, so a key replaced earlier
  can no longer sign for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["KeyPeriod", "server_rotation_problems", "site_rotation_problems"]


@dataclass(frozen=True)
class KeyPeriod:
    """One key a site registered; `since`: when it was registered (the registry's
    `registered_at`), None for the site's first key when that is not known."""

    key: ec.EllipticCurvePublicKey
    since: datetime | None = None


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, InvalidSignature, TypeError, UnsupportedAlgorithm):
        return False
    return True


def server_rotation_problems(
    signer: x509.Certificate,
    history: Sequence[x509.Certificate],
    ca_cert: x509.Certificate,
    at: datetime,
) -> list[str]:
    """Problems with `signer` signing at `at`, given every server certificate the CA
    issued (`history`, any order)."""
    problems = [
        f"server certificate history #{index + 1} ({cert.subject.rfc4514_string()}, "
        f"from {cert.not_valid_before_utc.isoformat()}): not issued by the CA"
        for index, cert in enumerate(history)
        if not _issued_by(cert, ca_cert)
    ]
    if all(_der(cert) != _der(signer) for cert in history):
        problems.append(
            "server signature: made with a certificate that is not among the server "
            "certificates the CA issued (--server-cert)"
        )
        return problems
    successors = sorted(
        cert.not_valid_before_utc
        for cert in history
        if cert.not_valid_before_utc > signer.not_valid_before_utc and _issued_by(cert, ca_cert)
    )
    if successors and successors[0] <= at:
        problems.append(
            f"server signature: made at {at.isoformat()} with a certificate replaced from "
            f"{successors[0].isoformat()} (rotated out; only its successor may sign then)"
        )
    return problems


def site_rotation_problems(
    site: str, key: ec.EllipticCurvePublicKey, history: Sequence[KeyPeriod], run_end: datetime
) -> list[str]:
    """Problems with site `site` countersigning, with `key`, a run that ended at
    `run_end`, given the keys it registered (`history`, any order)."""
    what = f"countersignature of site {site}"
    ordered = sorted(history, key=lambda p: (p.since is not None, p.since or run_end))
    index = next((i for i, p in enumerate(ordered) if _point(p.key) == _point(key)), None)
    if index is None:
        keys = "key" if len(history) == 1 else "keys"
        return [f"{what}: signed with a key other than the site's registered {keys}"]
    later = [p.since for p in ordered[index + 1 :] if p.since is not None]
    if later and later[0] <= run_end:
        return [
            f"{what}: signed with a key the site replaced at {later[0].isoformat()}, before "
            f"the run ended ({run_end.isoformat()}): a replaced key no longer signs for it"
        ]
    return []
