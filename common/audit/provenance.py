"""A run's signed provenance: who took part, with what data, settings and code, which
global model each round produced, and where the run's audit log ended.

The server writes `provenance.json` into the run folder at the end of a run::

    {"provenance": {"schema": "consortia.provenance/1", "run_id": ..., ...},
     "signatures": [{"signer": "server", "algorithm": "ecdsa-sha384",
                     "certificate": "<server certificate PEM>", "signature": "<base64>"},
                    {"signer": "site:<name>", "algorithm": "ecdsa-sha384",
                     "public_key": "ecdsa-sha2-nistp384 AAAA...", "signature": "<base64>"}]}

Every signature is ECDSA P-384 with SHA-384 over `b"consortia.provenance/1\\n"` followed
by the canonical JSON (sorted keys, compact) of the "provenance" object alone. The server
signs with the key of its CA-issued certificate; each site may countersign with the key
pair it registered with the server (OpenSSH format, as Flower's node authentication uses).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from consortia.common.audit.rotation import (
    KeyPeriod,
    server_rotation_problems,
    site_rotation_problems,
)
from consortia.common.errors import ConsortiaError
from consortia.common.files import write_json_atomic

__all__ = [
    "PROVENANCE_FILE",
    "PROVENANCE_SCHEMA",
    "SIGNATURE_ALGORITHM",
    "Provenance",
    "ProvenanceError",
    "SiteKeys",
    "canonical_provenance",
    "countersign",
    "provenance_sha256",
    "read_provenance",
    "sign_provenance",
    "structure_problems",
    "verify_provenance",
    "write_provenance",
]

PROVENANCE_SCHEMA = "consortia.provenance/1"
PROVENANCE_FILE = "provenance.json"
SIGNATURE_ALGORITHM = "ecdsa-sha384"
_DOMAIN = b"consortia.provenance/1\n"
_SIGNATURE = ec.ECDSA(hashes.SHA384())
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "run_id": str,
    "run_name": str,
    "config_hash": str,
    "app_hash": str,
    "started_at": str,
    "finished_at": (str, type(None)),
    "status": str,
    "participants": list,
    "rounds": list,
    "privacy": dict,
    "secure_aggregation": dict,
    "audit_log": dict,
}


SiteKeys = Mapping[str, ec.EllipticCurvePublicKey | Sequence[KeyPeriod]]
"""Site name -> its registered public key, or every key it registered (with times)."""


class ProvenanceError(ConsortiaError):
    """A provenance document cannot be read, signed or countersigned."""


@dataclass(frozen=True)
class Provenance:
    """The signed content. `participants`: one `{"site", "role", "dataset_fingerprint"}`
    per site (optionally `"audit_head"`: the head of the site's own audit log as it
    reported it; `"ledger_head"`: `{"sha256", "entries"}` of its privacy ledger in its
    last train reply). `rounds`: one `{"round", "global_model_sha256", "participants"}` per
    global model (round 0 = the initial model; the hash is the SHA-256 of the checkpoint
    file). `secure_aggregation`: `{"enabled": bool, "parameters": {...}}`. `audit_log`:
    `{"file", "head", "records"}` of the run's audit log when the run ended."""

    run_id: str
    run_name: str
    config_hash: str
    app_hash: str
    started_at: str
    finished_at: str | None
    status: str
    participants: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    privacy: dict[str, Any]
    secure_aggregation: dict[str, Any]
    audit_log: dict[str, Any]
    schema: str = field(default=PROVENANCE_SCHEMA)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))


def structure_problems(provenance: object) -> list[str]:
    """What is missing or of the wrong type in a "provenance" object (not signatures)."""
    if not isinstance(provenance, Mapping):
        return ["'provenance' is not a JSON object"]
    problems = []
    for key, kind in _REQUIRED.items():
        if key not in provenance:
            problems.append(f"provenance.{key}: missing")
        elif not isinstance(provenance[key], kind):
            problems.append(f"provenance.{key}: wrong type {type(provenance[key]).__name__}")
    if provenance.get("schema") not in (None, PROVENANCE_SCHEMA):
        problems.append(f"provenance.schema: {provenance['schema']!r}, not {PROVENANCE_SCHEMA}")
    audit = provenance.get("audit_log")
    if isinstance(audit, Mapping):
        for key, kind in (("file", str), ("head", str), ("records", int)):
            if not isinstance(audit.get(key), kind):
                problems.append(f"provenance.audit_log.{key}: missing or not a {kind.__name__}")
    return problems


def canonical_provenance(provenance: Mapping[str, Any]) -> bytes:
    """The bytes every signature covers: domain prefix + canonical JSON."""
    try:
        body = json.dumps(provenance, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ProvenanceError(f"provenance is not plain JSON: {err}") from None
    return _DOMAIN + body.encode("utf-8")


def provenance_sha256(document: Mapping[str, Any]) -> str:
    """SHA-256 of what the signatures cover: identifies the signed content, whatever the
    signatures and the file's formatting (a node records it when it countersigns)."""
    return hashlib.sha256(canonical_provenance(document["provenance"])).hexdigest()


def _check_p384(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        raise ProvenanceError(f"{what}: not an elliptic-curve key")
    if not isinstance(key.curve, ec.SECP384R1):
        raise ProvenanceError(f"{what}: curve {key.curve.name}, expected secp384r1 (P-384)")


def _public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def sign_provenance(
    provenance: Mapping[str, Any],
    server_key: ec.EllipticCurvePrivateKey,
    server_cert_pem: bytes,
) -> dict[str, Any]:
    """The signed document `{"provenance": ..., "signatures": [server signature]}`.

    The key must be the private key of the certificate (EC P-384)."""
    problems = structure_problems(provenance)
    if problems:
        raise ProvenanceError("cannot sign the provenance: " + "; ".join(problems))
    _check_p384(server_key, "server key")
    try:
        cert = x509.load_pem_x509_certificate(server_cert_pem)
    except ValueError as err:
        raise ProvenanceError(f"server certificate: not a PEM certificate ({err})") from None
    cert_key = cert.public_key()
    if not isinstance(cert_key, ec.EllipticCurvePublicKey) or _public_bytes(
        cert_key
    ) != _public_bytes(server_key.public_key()):
        raise ProvenanceError("the server key is not the key of the server certificate")
    content = json.loads(canonical_provenance(provenance)[len(_DOMAIN) :])
    signature = server_key.sign(canonical_provenance(content), _SIGNATURE)
    return {
        "provenance": content,
        "signatures": [
            {
                "signer": "server",
                "algorithm": SIGNATURE_ALGORITHM,
                "certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                "signature": base64.b64encode(signature).decode("ascii"),
            }
        ],
    }


def countersign(
    document: Mapping[str, Any],
    site_name: str,
    site_private_key: ec.EllipticCurvePrivateKey,
    *,
    ca_cert: x509.Certificate | None = None,
) -> dict[str, Any]:
    """A copy of `document` with the site's countersignature appended. Refused
    (`ProvenanceError`) when the server signature does not verify (against `ca_cert`
    too, when given), when the site did not take part, or when it already countersigned."""
    _check_p384(site_private_key, f"key of site {site_name}")
    problems = verify_provenance(document, ca_cert=ca_cert, site_keys=None)
    if problems:
        raise ProvenanceError("not countersigning: " + "; ".join(problems))
    signer = f"site:{site_name}"
    if any(sig.get("signer") == signer for sig in document["signatures"]):
        raise ProvenanceError(f"site {site_name} has already countersigned this provenance")
    sites = {p.get("site") for p in document["provenance"]["participants"] if isinstance(p, dict)}
    if site_name not in sites:
        raise ProvenanceError(f"site {site_name} is not among the run's participants")
    signature = site_private_key.sign(canonical_provenance(document["provenance"]), _SIGNATURE)
    public_key = site_private_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    signed = copy.deepcopy(dict(document))
    signed["signatures"].append(
        {
            "signer": signer,
            "algorithm": SIGNATURE_ALGORITHM,
            "public_key": public_key.decode("ascii"),
            "signature": base64.b64encode(signature).decode("ascii"),
        }
    )
    return signed


def _signed_at(provenance: Mapping[str, Any]) -> datetime:
    """When the server signed: the run's end (signed), or now for an unfinished record."""
    value = provenance.get("finished_at")
    try:
        return datetime.fromisoformat(str(value)).astimezone(UTC)
    except ValueError:
        return datetime.now(UTC)


def _certificate_problems(
    cert: x509.Certificate, ca_cert: x509.Certificate, at: datetime
) -> list[str]:
    problems = []
    try:
        cert.verify_directly_issued_by(ca_cert)
    except ValueError:
        problems.append(
            f"server certificate: issued by {cert.issuer.rfc4514_string()!r}, not by the CA "
            f"{ca_cert.subject.rfc4514_string()!r}"
        )
    except (InvalidSignature, TypeError, UnsupportedAlgorithm):
        problems.append("server certificate: its signature does not verify with the CA's key")
    for what, c in (("server certificate", cert), ("CA certificate", ca_cert)):
        if not c.not_valid_before_utc <= at <= c.not_valid_after_utc:
            problems.append(
                f"{what}: not valid at signing time {at.isoformat()} (valid "
                f"{c.not_valid_before_utc.isoformat()} to {c.not_valid_after_utc.isoformat()})"
            )
    try:
        is_ca = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        problems.append("CA certificate: not a CA (no basicConstraints CA:TRUE)")
    return problems


def _verify_one(key: ec.EllipticCurvePublicKey, signature: object, data: bytes) -> bool:
    try:
        key.verify(base64.b64decode(str(signature), validate=True), data, _SIGNATURE)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _server_problems(
    entry: Mapping[str, Any],
    data: bytes,
    at: datetime,
    ca_cert: x509.Certificate | None,
    server_certs: Sequence[x509.Certificate] | None,
) -> list[str]:
    try:
        cert = x509.load_pem_x509_certificate(str(entry.get("certificate")).encode())
    except ValueError:
        return ["server signature: its certificate is not a PEM certificate"]
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return ["server signature: the certificate's key is not an EC key"]
    problems = []
    if not _verify_one(key, entry.get("signature"), data):
        problems.append("server signature: invalid (the provenance was altered after signing)")
    if ca_cert is not None:
        problems.extend(_certificate_problems(cert, ca_cert, at))
        if server_certs is not None:
            problems.extend(server_rotation_problems(cert, server_certs, ca_cert, at))
    return problems


def _site_problems(
    site: str,
    entry: Mapping[str, Any],
    data: bytes,
    site_keys: SiteKeys | None,
    participants: set[str],
    run_end: datetime,
) -> list[str]:
    what = f"countersignature of site {site}"
    try:
        key = serialization.load_ssh_public_key(str(entry.get("public_key")).encode())
    except (ValueError, UnsupportedAlgorithm):
        return [f"{what}: its public key is not an OpenSSH public key"]
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return [f"{what}: its public key is not an EC key"]
    problems = []
    if not _verify_one(key, entry.get("signature"), data):
        problems.append(f"{what}: invalid (the provenance was altered after it was signed)")
    if site_keys is not None:
        registered = site_keys.get(site)
        if registered is None:
            problems.append(f"{what}: no registered key was given for this site")
        elif isinstance(registered, ec.EllipticCurvePublicKey):
            if _public_bytes(registered) != _public_bytes(key):
                problems.append(f"{what}: signed with a key other than the site's registered key")
        else:  # the site's key history (F8: rotation)
            problems.extend(site_rotation_problems(site, key, registered, run_end))
    if site not in participants:
        problems.append(f"{what}: the site is not among the run's participants")
    return problems


def verify_provenance(
    document: Mapping[str, Any],
    *,
    ca_cert: x509.Certificate | None,
    site_keys: SiteKeys | None,
    server_certs: Sequence[x509.Certificate] | None = None,
) -> list[str]:
    """Problems with a signed provenance document (empty when every signature holds).

    Without `ca_cert` the server signature is only checked against the certificate it
    carries (integrity, not who signed). With `site_keys` (site -> registered public key,
    or the site's key history) every countersignature must use its site's registered key
    (one not replaced before the run ended). With `ca_cert` and `server_certs` (every
    certificate the CA issued to the server) the signing certificate must be among them
    and not yet replaced at signing time (`consortia.common.audit.rotation`)."""
    if not isinstance(document, Mapping):
        return ["the document is not a JSON object"]
    provenance = document.get("provenance")
    problems = structure_problems(provenance)
    signatures = document.get("signatures")
    if not isinstance(signatures, list) or not all(isinstance(s, dict) for s in signatures):
        return [*problems, "'signatures' is not a list of objects"]
    if problems or not isinstance(provenance, Mapping):
        return problems
    data = canonical_provenance(provenance)
    participants = {
        str(p.get("site")) for p in provenance["participants"] if isinstance(p, Mapping)
    }
    servers = [s for s in signatures if s.get("signer") == "server"]
    if not signatures:
        return ["unsigned (written by a server without its key): nothing vouches for its content"]
    if len(servers) != 1:
        problems.append(f"{len(servers)} server signatures, expected exactly one")
    seen: set[str] = set()
    for entry in signatures:
        signer = str(entry.get("signer"))
        if entry.get("algorithm") != SIGNATURE_ALGORITHM:
            problems.append(f"signature of {signer}: algorithm {entry.get('algorithm')!r}")
        elif signer == "server" and len(servers) == 1:
            problems.extend(
                _server_problems(entry, data, _signed_at(provenance), ca_cert, server_certs)
            )
        elif signer.startswith("site:"):
            site = signer.removeprefix("site:")
            if site in seen:
                problems.append(f"site {site} countersigned more than once")
            seen.add(site)
            problems.extend(
                _site_problems(site, entry, data, site_keys, participants, _signed_at(provenance))
            )
        elif signer != "server":
            problems.append(f"signature of unknown signer {signer!r}")
    return problems


def read_provenance(path: Path) -> dict[str, Any]:
    """A provenance document as stored (not verified); `ProvenanceError` if unreadable."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ProvenanceError(f"{path}: cannot read ({err.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProvenanceError(f"{path}: not a JSON document ({err})") from None
    if not isinstance(document, dict) or "provenance" not in document:
        raise ProvenanceError(f"{path}: not a provenance document (no 'provenance' object)")
    return document


def write_provenance(path: Path, document: Mapping[str, Any]) -> None:
    """Write (or rewrite) a provenance document atomically."""
    write_json_atomic(path, document)
