"""Key agreement, encryption and secret sharing for secure aggregation.

Reuses Flower's secure-aggregation primitives where they are sound:

- Key pairs: ECDH on NIST P-384 (the curve Flower uses), from `cryptography`. Keys travel
  raw (private: the 48-byte scalar; public: the 49-byte compressed point) rather than as
  Flower's PEM.
- Encryption between two sites: Flower's `generate_shared_key` (ECDH, then HKDF-SHA256 to
  a Fernet key) with its `encrypt`/`decrypt` (Fernet: AES-128-CBC with HMAC-SHA256 and a
  fresh random IV per message, so one key serves a whole session and tampering is
  detected). What is encrypted names the session, round, sender and receiver
  (`consortia.common.secure_aggregation.bundle`).
- Secret sharing: pycryptodome's Shamir scheme over GF(2^128), the one under Flower's
  `create_shares`/`combine_shares`, on the 16-byte chunks of a secret, with fresh random
  coefficients (from the OS) per chunk; each share is the 4-byte little-endian index
  followed by the chunks' shares (Flower's layout). Our secrets are 32 bytes, so unlike
  Flower we do not pad them: a share is 36 bytes and rebuilding costs two chunks, not
  three. A combination of fewer than `threshold` shares silently yields garbage, so
  `combine_secret` refuses to try.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)

from consortia.common.secure_aggregation.config import SecAggError

__all__ = [
    "PRIVATE_KEY_BYTES",
    "PUBLIC_KEY_BYTES",
    "combine_secret",
    "ecdh_secret",
    "encryption_key",
    "generate_private_key",
    "open_sealed",
    "private_key_bytes",
    "private_key_from_bytes",
    "public_key_bytes",
    "public_key_from_bytes",
    "seal",
    "share_length",
    "split_secret",
]

_CURVE = ec.SECP384R1()
PRIVATE_KEY_BYTES = 48
PUBLIC_KEY_BYTES = 49
_CHUNK = 16
_INDEX = 4


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-384 private key."""
    return ec.generate_private_key(_CURVE)


def private_key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The raw 48-byte private scalar (big-endian)."""
    return key.private_numbers().private_value.to_bytes(PRIVATE_KEY_BYTES, "big")


def private_key_from_bytes(data: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    """The private key of a raw scalar; `what` names it in the error."""
    if not isinstance(data, bytes) or len(data) != PRIVATE_KEY_BYTES:
        raise SecAggError(f"{what}: a private key must be {PRIVATE_KEY_BYTES} bytes")
    try:
        return ec.derive_private_key(int.from_bytes(data, "big"), _CURVE)
    except ValueError:
        raise SecAggError(f"{what}: not a valid P-384 private key") from None


def public_key_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The compressed 49-byte encoding of a public key."""
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def public_key_from_bytes(data: bytes, what: str) -> ec.EllipticCurvePublicKey:
    """The public key of an encoded point (checked to lie on the curve)."""
    if not isinstance(data, bytes):
        raise SecAggError(f"{what}: a public key must be bytes")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, data)
    except ValueError:
        raise SecAggError(f"{what}: not a valid P-384 public key") from None


def ecdh_secret(private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey) -> bytes:
    """The raw ECDH shared secret (input to HKDF, never used directly)."""
    return private.exchange(ec.ECDH(), public)


def encryption_key(private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey) -> bytes:
    """The Fernet key two nodes share (Flower's ECDH + HKDF-SHA256)."""
    return generate_shared_key(private, public)


def seal(key: bytes, plaintext: bytes) -> bytes:
    """Encrypt and authenticate `plaintext` with a Fernet key."""
    return encrypt(key, plaintext)


def open_sealed(key: bytes, ciphertext: bytes, what: str) -> bytes:
    """The plaintext of `seal`; raises `SecAggError` naming `what` if it was tampered with
    or sealed with another key."""
    if not isinstance(ciphertext, bytes):
        raise SecAggError(f"{what} are not bytes")
    try:
        return decrypt(key, ciphertext)
    except (InvalidToken, ValueError):
        raise SecAggError(f"{what} do not decrypt (tampered or wrong key)") from None


def share_length(secret_length: int) -> int:
    """The length of one share of a `secret_length`-byte secret."""
    return _INDEX + secret_length


def split_secret(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """`holders` Shamir shares of `secret` (indices 1..holders, in that order), any
    `threshold` of which rebuild it. `secret` must be a non-empty multiple of 16 bytes."""
    if not 2 <= threshold <= holders:
        raise SecAggError(f"cannot share a secret {threshold}-of-{holders}")
    if not secret or len(secret) % _CHUNK:
        raise SecAggError(f"a shared secret must be a multiple of {_CHUNK} bytes")
    shares = [bytearray(index.to_bytes(_INDEX, "little")) for index in range(1, holders + 1)]
    for start in range(0, len(secret), _CHUNK):
        chunk = secret[start : start + _CHUNK]
        for index, piece in Shamir.split(threshold, holders, chunk, ssss=False):
            shares[index - 1] += piece
    return [bytes(share) for share in shares]


def combine_secret(shares: Sequence[bytes], threshold: int, what: str) -> bytes:
    """The secret behind `threshold` or more shares; `what` names it in errors."""
    if len(shares) < threshold:
        raise SecAggError(f"{what}: {len(shares)} shares, {threshold} needed")
    if not all(isinstance(share, bytes) for share in shares):
        raise SecAggError(f"{what}: the shares are not bytes")
    lengths = {len(share) for share in shares}
    if len(lengths) != 1:
        raise SecAggError(f"{what}: the shares differ in length")
    (length,) = lengths
    if length < _INDEX + _CHUNK or (length - _INDEX) % _CHUNK:
        raise SecAggError(f"{what}: malformed shares of {length} bytes")
    by_index = {int.from_bytes(share[:_INDEX], "little"): share for share in shares}
    if len(by_index) != len(shares) or min(by_index) < 1:
        raise SecAggError(f"{what}: the shares carry duplicate or invalid indices")
    chosen = [(index, by_index[index]) for index in sorted(by_index)[:threshold]]
    secret = bytearray()
    for start in range(_INDEX, length, _CHUNK):
        secret += Shamir.combine(
            [(index, share[start : start + _CHUNK]) for index, share in chosen], ssss=False
        )
    return bytes(secret)
