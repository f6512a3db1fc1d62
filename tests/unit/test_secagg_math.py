"""Secure-aggregation building blocks: config, quantisation, masks, shares, wire format."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Any

import numpy as np
import pytest
from Crypto.Cipher import AES
from flwr.app import ConfigRecord

from consortia.common.secure_aggregation.arithmetic import (
    dequantise_sum,
    mask_stream,
    pair_mask_key,
    quantisation_levels,
    quantise,
    self_mask_key,
    sum_error_bound,
)
from consortia.common.secure_aggregation.bundle import ShareBundle
from consortia.common.secure_aggregation.config import SecAggConfig, SecAggError, default_threshold
from consortia.common.secure_aggregation.crypto import (
    combine_secret,
    generate_private_key,
    private_key_bytes,
    private_key_from_bytes,
    public_key_from_bytes,
    split_secret,
)
from consortia.common.secure_aggregation.wire import (
    decode_ciphertexts,
    decode_round,
    decode_unmask_request,
    decode_unmask_shares,
    encode_round,
    encode_unmask_request,
)

# --- config -------------------------------------------------------------------------------


def _cfg(**changes: object) -> SecAggConfig:
    values: dict[str, Any] = {
        "session": 2,
        "participants": (3, 9, 12, 40),
        "threshold": 3,
        "neighbours": 3,
        "clip_range": 0.5,
        "vector_size": 10,
    }
    values.update(changes)
    return SecAggConfig(**values)


def test_config_round_trips_through_a_config_record() -> None:
    # Flower node ids are unsigned 64-bit
    cfg = _cfg(participants=(1, 5, 2**64 - 1), threshold=2, neighbours=2)
    assert SecAggConfig.from_config(ConfigRecord(cfg.to_config())) == cfg
    assert cfg.neighbours_of(5) == (1, 2**64 - 1)
    assert cfg.group_of(5) == (1, 5, 2**64 - 1)
    # a round with some of the session's sites: the graph restricted to them
    assert cfg.neighbours_in(5, {5, 2**64 - 1}) == (2**64 - 1,)
    assert cfg.group_in(5, {1}) == (1, 5)


def test_round_participants_are_checked_against_the_session() -> None:
    cfg = _cfg()
    assert cfg.round_participants([40, 3, 9], "round 1") == (3, 9, 40)
    with pytest.raises(SecAggError, match="round 1: node 7 is not a participant of session 2"):
        cfg.round_participants([3, 7], "round 1")
    with pytest.raises(SecAggError, match="round 1: the participants repeat a node id"):
        cfg.round_participants([3, 3], "round 1")
    strings: list[Any] = ["3"]
    with pytest.raises(SecAggError, match="must be a list of node ids"):
        cfg.round_participants(strings, "round 1")
    with pytest.raises(SecAggError, match="node 7 is not a participant of this session"):
        cfg.neighbours_of(7)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"participants": (9, 3, 12, 40)}, "sorted and unique"),
        ({"participants": (3, 3, 12, 40)}, "sorted and unique"),
        ({"participants": (3,)}, "at least 2 participants"),
        ({"participants": (-1, 3)}, "unsigned 64-bit"),
        ({"threshold": 2}, "more than half"),
        ({"threshold": 5}, "at most the group size 4"),
        ({"threshold": 1, "participants": (1, 2), "neighbours": 1}, "at least 2"),
        ({"clip_range": 0.0}, "'clip_range' must be finite and > 0"),
        ({"clip_range": float("nan")}, "'clip_range' must be finite"),
        ({"vector_size": 0}, "'vector_size' must be >= 1"),
        ({"session": True}, "'session' must be an integer"),
        ({"session": 2**64}, "'session' must be unsigned 64-bit"),
        ({"neighbours": 0}, "'neighbours' must be >= 1"),
    ],
)
def test_config_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SecAggError, match=message):
        _cfg(**changes)


def test_config_from_a_bad_record_names_the_field() -> None:
    record = _cfg().to_config()
    with pytest.raises(SecAggError, match=r"missing field 'secagg\.threshold'"):
        SecAggConfig.from_config({k: v for k, v in record.items() if k != "secagg.threshold"})
    with pytest.raises(SecAggError, match="different versions"):
        SecAggConfig.from_config({**record, "secagg.protocol": "consortia-secagg/0"})
    with pytest.raises(SecAggError, match="modulus_bits"):
        SecAggConfig.from_config({**record, "secagg.modulus_bits": 64})
    with pytest.raises(SecAggError, match="'vector_size' must be an integer"):
        SecAggConfig.from_config({**record, "secagg.vector_size": "10"})


def test_default_threshold() -> None:
    assert [default_threshold(n) for n in (2, 3, 4, 5, 8, 10)] == [2, 2, 3, 4, 6, 7]
    assert default_threshold(20, neighbours=4) == 4  # group of 5
    for n in range(2, 30):
        _cfg(participants=tuple(range(n)), threshold=default_threshold(n), neighbours=n)
    with pytest.raises(SecAggError):
        default_threshold(1)


# --- quantisation -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 100])
def test_quantisation_error_is_within_the_documented_bound(n: int) -> None:
    clip = 0.3
    levels = quantisation_levels(n)
    assert levels == (2**32 - 1) // n and n * levels < 2**32
    rng = np.random.default_rng(n)
    vectors = [rng.uniform(-0.5, 0.5, 5000).astype(np.float32) for _ in range(n)]
    total = np.zeros(5000, np.uint32)
    for vector in vectors:
        q, clipped = quantise(vector, clip, n)
        assert q.dtype == np.uint32 and q.max() <= levels
        assert clipped == np.count_nonzero(np.abs(vector) > clip)
        total += q
    exact = sum(np.clip(v.astype(np.float64), -clip, clip) for v in vectors)
    error = np.max(np.abs(dequantise_sum(total, clip, n, n) - exact))
    assert error <= sum_error_bound(clip, n, n) * (1 + 1e-6)
    assert error > sum_error_bound(clip, n, n) / 100  # the bound is not loose by far


def test_quantisation_edges_do_not_overflow_the_sum() -> None:
    n, clip = 7, 2.0
    top, _ = quantise(np.full(4, 5.0, np.float32), clip, n)
    bottom, _ = quantise(np.full(4, -5.0, np.float32), clip, n)
    assert (top == quantisation_levels(n)).all() and (bottom == 0).all()
    total = sum((top for _ in range(n)), np.zeros(4, np.uint32))
    np.testing.assert_allclose(dequantise_sum(total, clip, n, n), n * clip, rtol=1e-12)
    with pytest.raises(SecAggError, match="2 non-finite"):
        quantise(np.array([np.inf, 0.0, np.nan], np.float32), clip, n)


def test_quantise_leaves_the_callers_array_alone() -> None:
    vector = np.array([3.0, -3.0, 0.1])
    quantise(vector, 1.0, 2)
    assert vector.tolist() == [3.0, -3.0, 0.1]


# --- masks --------------------------------------------------------------------------------


def _hkdf_sha256(secret: bytes, info: bytes) -> bytes:
    """RFC 5869 with an empty salt, written out independently."""
    prk = hmac.new(bytes(32), secret, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_masks_are_hkdf_keyed_aes_ctr_keystreams() -> None:
    seed = os.urandom(32)
    key = self_mask_key(seed, 9, 4, 77)
    info = b"consortia-secagg/2|self-mask|" + struct.pack(">QQQ", 9, 4, 77)
    assert key == _hkdf_sha256(seed, info)
    stream = AES.new(key, AES.MODE_CTR, nonce=b"", initial_value=0).encrypt(bytes(4 * 1001))
    expected = np.frombuffer(stream, dtype="<u4")
    np.testing.assert_array_equal(mask_stream(key, 1001), expected)
    secret = os.urandom(48)
    pair = pair_mask_key(secret, 9, 4, 12, 3)
    assert pair == pair_mask_key(secret, 9, 4, 3, 12)
    assert pair == _hkdf_sha256(
        secret, b"consortia-secagg/2|pair-mask|" + struct.pack(">QQQQ", 9, 4, 3, 12)
    )


def test_masks_differ_by_seed_session_round_node_and_purpose() -> None:
    seed, secret = os.urandom(32), os.urandom(48)
    keys = [
        self_mask_key(seed, 0, 1, 5),
        self_mask_key(os.urandom(32), 0, 1, 5),
        self_mask_key(seed, 0, 2, 5),
        self_mask_key(seed, 1, 1, 5),
        self_mask_key(seed, 0, 1, 6),
        pair_mask_key(seed, 0, 1, 5, 6),
        pair_mask_key(secret, 0, 1, 5, 6),
        pair_mask_key(secret, 0, 2, 5, 6),  # the same two sites, the next round
        pair_mask_key(secret, 1, 1, 5, 6),  # the same round number, another session
        pair_mask_key(secret, 0, 1, 5, 7),
    ]
    assert len(set(keys)) == len(keys)
    streams = [mask_stream(key, 64).tobytes() for key in keys]
    assert len(set(streams)) == len(streams)
    assert mask_stream(keys[0], 64).tobytes() == streams[0]  # same inputs, same mask
    big = mask_stream(keys[0], 200_000).astype(np.float64)
    assert abs(big.mean() / 2**32 - 0.5) < 0.01  # uniform over uint32, not small values
    assert big.max() > 2**31


# --- keys and shares ----------------------------------------------------------------------


def test_shamir_shares_reconstruct_and_refuse_too_few() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, 3, 5)
    assert [len(share) for share in shares] == [36] * 5  # 4-byte index + 2 chunks
    assert [int.from_bytes(share[:4], "little") for share in shares] == [1, 2, 3, 4, 5]
    assert combine_secret(shares[2:], 3, "x") == secret
    assert combine_secret([shares[4], shares[0], shares[2], shares[1]], 3, "x") == secret
    with pytest.raises(SecAggError, match="key of node 8: 2 shares, 3 needed"):
        combine_secret(shares[:2], 3, "key of node 8")
    with pytest.raises(SecAggError, match="duplicate"):
        combine_secret([shares[0], shares[0], shares[1]], 3, "x")
    with pytest.raises(SecAggError, match="differ in length"):
        combine_secret([shares[0], shares[1], shares[2][:-16]], 3, "x")
    with pytest.raises(SecAggError, match="multiple of 16 bytes"):
        split_secret(b"short", 2, 3)
    with pytest.raises(SecAggError, match="cannot share a secret 4-of-3"):
        split_secret(secret, 4, 3)


def test_private_keys_round_trip_and_bad_keys_are_refused() -> None:
    key = generate_private_key()
    raw = private_key_bytes(key)
    assert len(raw) == 48
    assert private_key_from_bytes(raw, "k").private_numbers() == key.private_numbers()
    with pytest.raises(SecAggError, match="not a valid P-384 private key"):
        private_key_from_bytes(bytes(48), "k")
    with pytest.raises(SecAggError, match="key of node 4: not a valid P-384 public key"):
        public_key_from_bytes(b"\x04" + bytes(96), "key of node 4")  # (0, 0): off the curve


# --- wire ---------------------------------------------------------------------------------


def test_wire_decoding_names_the_source_and_field() -> None:
    with pytest.raises(SecAggError, match="from node 4: 'ct' has the wrong length"):
        decode_ciphertexts({"ct_ids": [1, 2], "ct": [b"a"]}, "node 4")
    with pytest.raises(SecAggError, match="'ct_ids' repeats a node id"):
        decode_ciphertexts({"ct_ids": [1, 1], "ct": [b"a", b"b"]}, "node 4")
    with pytest.raises(SecAggError, match="'b_ids' must be a list of node ids"):
        decode_unmask_shares({"b_ids": ["1"], "b_shares": [b"a"]}, "node 4")
    with pytest.raises(SecAggError, match="'round' must be an integer >= 0"):
        decode_round({"round": -1, "participants": [1, 2]}, "server")
    with pytest.raises(SecAggError, match="from server: 'participants' repeats a node id"):
        decode_round({"round": 1, "participants": [1, 1]}, "server")


def test_wire_round_trips_through_a_config_record() -> None:
    record = ConfigRecord(encode_round(4, [9, 2**64 - 1, 3]))
    assert decode_round(record, "server") == (4, [3, 9, 2**64 - 1])
    request = ConfigRecord(encode_unmask_request(4, [3, 9], [12], {9: b"ct"}))
    assert decode_unmask_request(request, "server") == (4, [3, 9], [12], {9: b"ct"})


# --- share bundles ------------------------------------------------------------------------


def test_share_bundle_layout_round_trips_and_refuses_bad_bytes() -> None:
    bundle = ShareBundle(2**64 - 1, 3, 5, 9, b"b" * 36, {12: b"x" * 36, 7: b"y" * 36})
    data = bundle.to_bytes()
    assert len(data) == 36 + 36 + 2 * (8 + 36)
    assert ShareBundle.from_bytes(data, "shares") == bundle
    with pytest.raises(SecAggError, match="shares are truncated"):
        ShareBundle.from_bytes(data[:20], "shares")
    with pytest.raises(SecAggError, match="shares have the wrong length"):
        ShareBundle.from_bytes(data[:-1], "shares")
    twice = data[:-44] + data[-88:-44]  # the first neighbour named again
    with pytest.raises(SecAggError, match="name a neighbour twice"):
        ShareBundle.from_bytes(twice, "shares")
    with pytest.raises(SecAggError, match="same length"):
        ShareBundle(1, 1, 1, 2, b"b" * 36, {3: b"x"}).to_bytes()
