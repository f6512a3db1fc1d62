"""Arithmetic of secure aggregation: quantisation to uint32 and cryptographic masks.

Quantisation (deterministic, round to nearest). With `n` participants and clip range
`c`, every value is clipped to `[-c, c]` and mapped to an integer in `[0, Q]`,
`Q = floor((2**32 - 1) / n)`, by `q = rint((x + c) * Q / (2c))`. The sum of at most `n`
such integers is at most `n * Q < 2**32`, so the sum modulo 2**32 is the exact integer
sum and never wraps. With step `delta = 2c / Q`, each value is off by at most
`delta / 2 = c / Q`, so the dequantised sum `S * delta - m * c` of `m` active sites
differs from the float64 sum of their clipped vectors by at most `m * c / Q` per element
(plus float64 rounding, about 1e-16 relative). See `sum_error_bound`.

Masks. A mask is the AES-256-CTR keystream (zero nonce, counter from 0) read as
little-endian uint32. Its 32-byte key is derived with HKDF-SHA256 from a secret (the
site's fresh 32-byte self-mask seed of the round, or the raw ECDH secret of two sites'
session keys) with `info` binding the protocol version, the purpose, the session, the
round and the node ids, so that every key, and so every keystream, is used exactly once:
the pairwise mask of two sites differs from round to round, and the key of one round
tells nothing about the key of another (HKDF is a pseudo-random function). NumPy's
generators are never used for masks.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from consortia.common.secure_aggregation.config import MODULUS_BITS, PROTOCOL, SecAggError

__all__ = [
    "MASK_KEY_BYTES",
    "add_mask",
    "dequantise_sum",
    "derive_key",
    "mask_stream",
    "pair_mask_key",
    "quantisation_levels",
    "quantise",
    "self_mask_key",
    "subtract_mask",
    "sum_error_bound",
]

MASK_KEY_BYTES = 32
_UINT32 = np.dtype("<u4")


def quantisation_levels(n: int) -> int:
    """`Q`, the largest quantised value for `n` participants: `floor((2**32 - 1) / n)`."""
    if n < 1:
        raise SecAggError(f"quantisation needs at least one participant, got {n}")
    return (2**MODULUS_BITS - 1) // n


def quantise(
    vector: npt.NDArray[np.floating], clip_range: float, n: int
) -> tuple[npt.NDArray[np.uint32], int]:
    """Clip `vector` to `[-clip_range, clip_range]` and quantise it; also count clipped values.

    Raises `SecAggError` if the vector holds NaN or infinite values.
    """
    x = np.array(vector, dtype=np.float64)  # a copy: the caller's array is kept
    finite = np.isfinite(x)
    if not finite.all():
        raise SecAggError(
            f"the update holds {int(x.size - np.count_nonzero(finite))} non-finite values"
        )
    clipped = int(np.count_nonzero(np.abs(x) > clip_range))
    np.clip(x, -clip_range, clip_range, out=x)
    levels = quantisation_levels(n)
    x += clip_range
    x *= levels / (2.0 * clip_range)
    np.rint(x, out=x)
    np.clip(x, 0, levels, out=x)
    return x.astype(np.uint32), clipped


def dequantise_sum(
    total: npt.NDArray[np.uint32], clip_range: float, n: int, active: int
) -> npt.NDArray[np.float64]:
    """The float64 sum of `active` sites' clipped vectors from their quantised sum."""
    levels = quantisation_levels(n)
    result = total.astype(np.float64)
    result *= 2.0 * clip_range / levels
    result -= active * clip_range
    return result


def sum_error_bound(clip_range: float, n: int, active: int) -> float:
    """Largest error per element of `dequantise_sum` against the exact clipped sum."""
    return active * clip_range / quantisation_levels(n)


def derive_key(
    secret: bytes,
    purpose: str,
    session: int,
    round_number: int,
    *node_ids: int,
    context: bytes = b"",
) -> bytes:
    """A 32-byte key: HKDF-SHA256 of `secret`, bound to purpose, session, round, nodes
    and an optional `context` (e.g. a digest of what the round's sites must agree on)."""
    if len(secret) < 16:
        raise SecAggError("a mask secret must be at least 16 bytes")
    numbers = struct.pack(">QQ", session, round_number)
    info = b"|".join([PROTOCOL.encode(), purpose.encode(), numbers])
    info += b"".join(struct.pack(">Q", node) for node in node_ids)
    if context:
        info += b"|" + struct.pack(">I", len(context)) + context
    hkdf = HKDF(algorithm=hashes.SHA256(), length=MASK_KEY_BYTES, salt=None, info=info)
    return hkdf.derive(secret)


def self_mask_key(seed: bytes, session: int, round_number: int, node_id: int) -> bytes:
    """The key of node `node_id`'s self mask in a round, from its seed `b` of the round."""
    return derive_key(seed, "self-mask", session, round_number, node_id)


def pair_mask_key(
    ecdh_secret: bytes,
    session: int,
    round_number: int,
    node_a: int,
    node_b: int,
    *,
    context: bytes = b"",
) -> bytes:
    """The key of the pairwise mask of two nodes in a round (the same whichever way
    round). Two sites derive the same key only if they got the same `context`: a server
    that tells sites different things (weights, participants, model) gets a random sum."""
    low, high = sorted((node_a, node_b))
    return derive_key(ecdh_secret, "pair-mask", session, round_number, low, high, context=context)


def mask_stream(key: bytes, size: int) -> npt.NDArray[np.uint32]:
    """`size` uniform uint32 values: the AES-256-CTR keystream of `key` (zero nonce)."""
    if len(key) != MASK_KEY_BYTES:
        raise SecAggError(f"a mask key must be {MASK_KEY_BYTES} bytes, got {len(key)}")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(4 * size)) + encryptor.finalize()
    return np.frombuffer(stream, dtype=_UINT32).astype(np.uint32, copy=False)


def add_mask(target: npt.NDArray[np.uint32], key: bytes) -> None:
    """`target += mask_stream(key)` modulo 2**32, in place."""
    np.add(target, mask_stream(key, target.size), out=target)


def subtract_mask(target: npt.NDArray[np.uint32], key: bytes) -> None:
    """`target -= mask_stream(key)` modulo 2**32, in place."""
    np.subtract(target, mask_stream(key, target.size), out=target)
