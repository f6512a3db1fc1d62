"""Signed updates: content digests, ECDSA signatures with site keys, replayed nonces."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from consortia.common.crypto.pki import create_site_key, load_site_private_key, load_site_public_key
from consortia.common.crypto.signing import (
    UPDATE_DOMAIN,
    ReplayGuard,
    SignatureError,
    SignedFields,
    content_digest,
    new_nonce,
    sign,
    verify,
)
from consortia.common.crypto.site_keys import public_key_fingerprint


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv.bias": np.zeros(4, dtype=np.float32),
        "steps": np.array(12, dtype=np.int64),
    }


def metrics() -> dict[str, dict[str, Any]]:
    return {
        "train_metrics": {"loss": 0.1 + 0.2, "num-examples": 40, "dice": [0.5, 1 / 3]},
        "privacy": {"epsilon": 1.25, "accountant": "rdp", "nan": float("nan")},
    }


def fields(**changes: Any) -> SignedFields:
    base = SignedFields(
        kind="train",
        run_id="17",
        round=3,
        node_id=987654321,
        nonce="ab" * 16,
        site="hospital-a",
        digest=content_digest(arrays(), metrics()),
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> ec.EllipticCurvePrivateKey:
    folder: Path = tmp_path_factory.mktemp("keys")
    return load_site_private_key(create_site_key(folder, "hospital-a").private_key)


# -- content digest --------------------------------------------------------------------


def test_content_digest_is_stable_and_independent_of_order_and_memory_layout() -> None:
    digest = content_digest(arrays(), metrics())
    assert len(digest) == 64
    assert content_digest(arrays(), metrics()) == digest
    reordered_arrays = dict(reversed(list(arrays().items())))
    reordered_metrics = {k: dict(reversed(list(v.items()))) for k, v in reversed(metrics().items())}
    assert content_digest(reordered_arrays, reordered_metrics) == digest
    fortran = arrays()
    fortran["conv.weight"] = np.asfortranarray(fortran["conv.weight"])
    assert content_digest(fortran, metrics()) == digest
    # Values as they come back from Flower's records (float64 / int / list of float64).
    received = metrics()
    received["train_metrics"]["dice"] = [float(np.float64(0.5)), float(np.float64(1 / 3))]
    received["train_metrics"]["num-examples"] = int(np.int64(40))
    received["privacy"]["epsilon"] = np.float64(1.25)
    assert content_digest(arrays(), received) == digest


def _changed(kind: str) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    a, m = arrays(), metrics()
    if kind == "value":
        a["conv.weight"][1, 2, 0, 1] += np.float32(1e-6)
    elif kind == "dtype":
        a["conv.bias"] = a["conv.bias"].astype(np.float64)
    elif kind == "byte order":
        a["conv.bias"] = a["conv.bias"].astype(">f4")
    elif kind == "shape":
        a["conv.bias"] = a["conv.bias"].reshape(2, 2)
    elif kind == "array name":
        a["conv.bias2"] = a.pop("conv.bias")
    elif kind == "extra array":
        a["extra"] = np.zeros(0, dtype=np.float32)
    elif kind == "metric value":
        m["train_metrics"]["loss"] = 0.30000000000000004 + 1e-16 * 3
    elif kind == "metric int vs float":
        m["train_metrics"]["num-examples"] = 40.0
    elif kind == "metric name":
        m["train_metrics"]["Loss"] = m["train_metrics"].pop("loss")
    elif kind == "record name":
        m["eval_metrics"] = m.pop("train_metrics")
    elif kind == "list item":
        m["train_metrics"]["dice"] = [0.5]
    elif kind == "arrays moved to records":
        m["steps"] = {}
    return a, m


@pytest.mark.parametrize(
    "kind",
    [
        "value",
        "dtype",
        "byte order",
        "shape",
        "array name",
        "extra array",
        "metric value",
        "metric int vs float",
        "metric name",
        "record name",
        "list item",
        "arrays moved to records",
    ],
)
def test_content_digest_changes_with_any_change(kind: str) -> None:
    assert content_digest(*_changed(kind)) != content_digest(arrays(), metrics())


def test_content_digest_refuses_what_it_cannot_sign() -> None:
    with pytest.raises(SignatureError, match="holds Python objects"):
        content_digest({"x": np.array([object()])}, {})
    with pytest.raises(SignatureError, match="cannot sign a record value of type set"):
        content_digest({}, {"m": {"x": {1, 2}}})


def test_content_digest_of_an_8_mb_update_is_fast() -> None:
    big = {"w": np.random.default_rng(0).standard_normal(2_000_000).astype(np.float32)}
    content_digest(big, {})
    start = time.perf_counter()
    digest = content_digest(big, {})
    elapsed = time.perf_counter() - start
    assert elapsed < 0.25, elapsed  # about 5 ms: SHA-256 over the buffer, no copy
    assert digest == content_digest({"w": big["w"].copy()}, {})


# -- signatures ------------------------------------------------------------------------


def test_sign_and_verify_round_trip(key: ec.EllipticCurvePrivateKey) -> None:
    signed = fields()
    signature = sign(key, signed)
    verify(key.public_key(), signed, signature)
    verify(key.public_key(), signed, signature, claimed_signer=public_key_fingerprint(key))
    assert signed.payload().startswith(UPDATE_DOMAIN)
    assert b" " not in signed.payload()
    assert signed.payload() == fields().payload()  # canonical


def test_verify_with_the_registered_key_loaded_from_its_file(tmp_path: Path) -> None:
    files = create_site_key(tmp_path, "hospital-b")
    signed = fields(site="hospital-b")
    signature = sign(load_site_private_key(files.private_key), signed)
    verify(load_site_public_key(files.public_key), signed, signature)


@pytest.mark.parametrize(
    "change",
    [
        {"digest": "0" * 64},
        {"round": 4},
        {"node_id": 1},
        {"nonce": "cd" * 16},
        {"site": "hospital-z"},
        {"kind": "evaluate"},
        {"run_id": "18"},
    ],
)
def test_any_changed_field_breaks_the_signature(
    key: ec.EllipticCurvePrivateKey, change: dict[str, Any]
) -> None:
    signature = sign(key, fields())
    with pytest.raises(SignatureError, match="signature does not match"):
        verify(key.public_key(), fields(**change), signature)


def test_tampered_content_fails_after_recomputing_the_digest(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    signature = sign(key, fields())
    tampered = arrays()
    tampered["conv.bias"][0] = 1.0
    received = fields(digest=content_digest(tampered, metrics()))
    with pytest.raises(SignatureError, match="changed after it was signed"):
        verify(key.public_key(), received, signature)


def test_flipped_signature_byte_and_other_keys_fail(key: ec.EllipticCurvePrivateKey) -> None:
    signature = bytearray(sign(key, fields()))
    for position in (len(signature) // 2, len(signature) - 1, 0):
        flipped = bytearray(signature)
        flipped[position] ^= 0x01
        with pytest.raises(SignatureError, match="signature does not match"):
            verify(key.public_key(), fields(), bytes(flipped))
    with pytest.raises(SignatureError, match="is not signed"):
        verify(key.public_key(), fields(), b"")

    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(SignatureError, match="signature does not match"):
        verify(key.public_key(), fields(), sign(other, fields()))
    with pytest.raises(SignatureError, match="signed by another key"):
        verify(
            key.public_key(),
            fields(),
            sign(other, fields()),
            claimed_signer=public_key_fingerprint(other),
        )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"kind": "upload"}, "kind 'upload'"),
        ({"round": -1}, "round must be a non-negative integer"),
        ({"node_id": True}, "node_id must be"),
        ({"nonce": "xyz"}, "nonce must be"),
        ({"nonce": "ab"}, "nonce must be"),
        ({"digest": "ABC"}, "digest must be"),
        ({"site": "../x"}, "not a valid site name"),
        ({"run_id": ""}, "run_id must be"),
    ],
)
def test_malformed_fields_are_refused(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(SignatureError, match=problem):
        fields(**change)


# -- replayed updates -------------------------------------------------------------------


def test_replay_guard_accepts_each_nonce_once_and_only_the_one_sent() -> None:
    guard = ReplayGuard(run_id="17")
    first, second = new_nonce(), new_nonce()
    assert first != second and len(first) == 32
    guard.check(fields(nonce=first), first)
    with pytest.raises(SignatureError, match="replayed update: nonce already used"):
        guard.check(fields(nonce=first), first)
    with pytest.raises(SignatureError, match="replayed update"):  # an old reply in a new round
        guard.check(fields(nonce=first, round=4), second)
    with pytest.raises(SignatureError, match="nonce does not match the one sent to this node"):
        guard.check(fields(nonce=second), new_nonce())
    guard.check(fields(nonce=second, round=4), second)  # refusal did not burn the nonce
    assert len(guard) == 2
    with pytest.raises(SignatureError, match="belongs to run '99', not '17'"):
        guard.check(fields(run_id="99", nonce=new_nonce()), new_nonce())
