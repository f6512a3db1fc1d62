"""Signed model updates: every reply a site sends (query, train, evaluate) carries an
ECDSA signature that the server checks against the site's registered public key.

What is signed is `SignedFields`: the kind of message, the run, the round, the Flower node
id, a fresh nonce the server chose for this message (so a recorded reply cannot be played
back later), the site's name and `content_digest` of the reply's arrays and metric/config
records. `SignedFields.payload()` is canonical JSON (sorted keys, no spaces) after the
domain prefix `consortia.update/1\\n`, so a signature over an update can never be taken for
a signature over anything else. Signatures are ECDSA with SHA-384, DER encoded, made with
the site's P-384 key (`consortia.common.crypto.site_keys`).

The server must (1) recompute the digest from what it received, never trust the one in
the message, (2) `verify` the signature with the registered key, then (3) let a
`ReplayGuard` check the nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from consortia.common.crypto.site_keys import public_key_fingerprint
from consortia.common.errors import ConsortiaError

__all__ = [
    "KINDS",
    "UPDATE_DOMAIN",
    "ReplayGuard",
    "SignatureError",
    "SignedFields",
    "content_digest",
    "new_nonce",
    "sign",
    "verify",
]

UPDATE_DOMAIN = b"consortia.update/1\n"
_CONTENT_DOMAIN = b"consortia.content/1\n"
KINDS = ("query", "train", "evaluate")

_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_NONCE = re.compile(r"^[0-9a-f]{32,128}$")
_SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SIGNATURE = ec.ECDSA(hashes.SHA384())


class SignatureError(ConsortiaError):
    """An update is unsigned, its signature does not verify, or it was replayed; the
    message says which."""


@dataclass(frozen=True)
class SignedFields:
    """Everything a site's signature covers. `digest` is `content_digest` of the reply;
    `nonce` is the hex string the server sent with this message (`new_nonce`)."""

    kind: str
    run_id: str
    round: int
    node_id: int
    nonce: str
    site: str
    digest: str

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(self.run_id, str) or not self.run_id:
            problems.append("run_id must be a non-empty string")
        for name in ("round", "node_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be a non-negative integer (got {value!r})")
        if not isinstance(self.nonce, str) or not _NONCE.fullmatch(self.nonce):
            problems.append("nonce must be 32 to 128 lower-case hex digits")
        if not isinstance(self.site, str) or not _SITE.fullmatch(self.site):
            problems.append(f"site {self.site!r} is not a valid site name")
        if not isinstance(self.digest, str) or not _HEX_DIGEST.fullmatch(self.digest):
            problems.append("digest must be 64 lower-case hex digits (SHA-256)")
        if problems:
            raise SignatureError("malformed signed fields: " + "; ".join(problems))

    def payload(self) -> bytes:
        """The exact bytes that are signed."""
        body = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return UPDATE_DOMAIN + body.encode("ascii")

    def describe(self) -> str:
        """`"train update from site 'a' (node 7, round 3)"`, for messages."""
        return (
            f"{self.kind} update from site {self.site!r} (node {self.node_id}, round {self.round})"
        )


def new_nonce() -> str:
    """A fresh nonce for one message to one node: 128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


def _frame(digest: Any, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "big"))
    digest.update(data)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes | bytearray):
        return {"bytes": bytes(value).hex()}
    raise SignatureError(f"cannot sign a record value of type {type(value).__name__}")


def _canonical_json(value: Any) -> bytes:
    """Floats as Python's shortest round-trip repr (what float64 values read back from
    Flower's protobuf print as), NaN/inf as JSON's extension tokens."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default
    )
    return text.encode("ascii")


def content_digest(
    arrays: Mapping[str, np.ndarray], metrics: Mapping[str, Mapping[str, Any]]
) -> str:
    """Hex SHA-256 over every array (name, dtype with byte order, shape, raw C-order bytes)
    and every metric/config record (name, canonical JSON of its values), in name order.
    Arrays are hashed in place when C-contiguous (no copy)."""
    digest = hashlib.sha256(_CONTENT_DOMAIN)
    _frame(digest, b"arrays:%d" % len(arrays))
    for name in sorted(arrays):
        if not isinstance(name, str):
            raise SignatureError(f"array names must be strings (got {name!r})")
        array = np.asarray(arrays[name])
        if array.dtype.hasobject:
            raise SignatureError(f"array {name!r} holds Python objects; cannot sign it")
        header = {"name": name, "dtype": array.dtype.str, "shape": list(array.shape)}
        _frame(digest, _canonical_json(header))
        flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        digest.update(flat.nbytes.to_bytes(8, "big"))
        digest.update(flat.data)
    _frame(digest, b"records:%d" % len(metrics))
    for name in sorted(metrics):
        if not isinstance(name, str):
            raise SignatureError(f"record names must be strings (got {name!r})")
        _frame(digest, name.encode("utf-8"))
        _frame(digest, _canonical_json(dict(metrics[name])))
    return digest.hexdigest()


def sign(private_key: ec.EllipticCurvePrivateKey, fields: SignedFields) -> bytes:
    """The DER-encoded ECDSA (SHA-384) signature of `fields.payload()`."""
    return private_key.sign(fields.payload(), _SIGNATURE)


def verify(
    public_key: ec.EllipticCurvePublicKey,
    fields: SignedFields,
    signature: bytes,
    *,
    claimed_signer: str | None = None,
) -> None:
    """Return when `signature` is the registered key's signature of `fields`, else raise
    SignatureError saying why. `claimed_signer` is the key fingerprint the site says it
    signed with (sent beside the signature, not trusted): when it differs from the
    registered key's, the error says "signed by another key" (for example a site that
    made a new key and did not register it)."""
    registered = public_key_fingerprint(public_key)
    if not signature:
        raise SignatureError(f"{fields.describe()} is not signed")
    if claimed_signer is not None and claimed_signer != registered:
        raise SignatureError(
            f"{fields.describe()} was signed by another key ({claimed_signer}) than the one "
            f"registered for the site ({registered}); re-register the site's key or fix "
            "the node's key file"
        )
    try:
        public_key.verify(bytes(signature), fields.payload(), _SIGNATURE)
    except InvalidSignature:
        raise SignatureError(
            f"{fields.describe()}: signature does not match: the update was changed after "
            f"it was signed, or signed by another key than the registered one ({registered})"
        ) from None


class ReplayGuard:
    """Nonces already accepted in one run: an update is accepted once, and only with the
    nonce the server sent to that node for that message. Call after `verify`."""

    def __init__(self, run_id: str | None = None) -> None:
        self._run_id = run_id
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, fields: SignedFields, expected_nonce: str) -> None:
        """Accept `fields` (remembering its nonce) or raise SignatureError."""
        if self._run_id is not None and fields.run_id != self._run_id:
            raise SignatureError(
                f"{fields.describe()} belongs to run {fields.run_id!r}, not {self._run_id!r}"
            )
        if fields.nonce in self._seen:
            raise SignatureError(f"{fields.describe()}: replayed update: nonce already used")
        if not hmac.compare_digest(fields.nonce.encode(), expected_nonce.encode()):
            raise SignatureError(
                f"{fields.describe()}: nonce does not match the one sent to this node "
                "for this round"
            )
        self._seen.add(fields.nonce)
