"""Signed provenance: the server signs with its CA-issued key, sites countersign with their
registered keys; any change to the content, a foreign CA or a foreign key is found."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from consortia.common.audit.provenance import (
    PROVENANCE_SCHEMA,
    Provenance,
    ProvenanceError,
    canonical_provenance,
    countersign,
    read_provenance,
    sign_provenance,
    verify_provenance,
    write_provenance,
)
from tests.support.provenance_keys import NOW, Authority, make_authority, site_key

AUTHORITY = make_authority()
SITE_A = site_key()
SITE_B = site_key()
KEYS = {"site-a": SITE_A.public_key(), "site-b": SITE_B.public_key()}


def _provenance() -> dict[str, Any]:
    return Provenance(
        run_id="run-1",
        run_name="study-20260301-120000",
        config_hash="c" * 64,
        app_hash="a" * 64,
        started_at="2026-03-01T12:00:00.000Z",
        finished_at=NOW.isoformat().replace("+00:00", "Z"),
        status="completed",
        participants=[
            {"site": "site-a", "role": "train", "dataset_fingerprint": "1" * 64},
            {"site": "site-b", "role": "holdout", "dataset_fingerprint": "2" * 64},
        ],
        rounds=[
            {"round": 0, "global_model_sha256": "0" * 64, "participants": []},
            {"round": 1, "global_model_sha256": "e" * 64, "participants": ["site-a"]},
        ],
        privacy={"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5},
        secure_aggregation={"enabled": True, "parameters": {"shares": 3, "threshold": 2}},
        audit_log={"file": "audit.jsonl", "head": "f" * 64, "records": 12},
    ).to_dict()


def _signed(authority: Authority = AUTHORITY) -> dict[str, Any]:
    return sign_provenance(_provenance(), authority.server_key, authority.server_cert_pem)


def test_sign_and_verify(tmp_path: Path) -> None:
    document = _signed()
    assert document["provenance"]["schema"] == PROVENANCE_SCHEMA
    (signature,) = document["signatures"]
    assert signature["signer"] == "server" and signature["algorithm"] == "ecdsa-sha384"
    assert signature["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert verify_provenance(document, ca_cert=AUTHORITY.ca_cert, site_keys=KEYS) == []
    path = tmp_path / "provenance.json"
    write_provenance(path, document)
    stored = read_provenance(path)
    assert stored == document
    reordered = json.loads(json.dumps(stored, sort_keys=True))  # key order does not matter
    assert verify_provenance(reordered, ca_cert=AUTHORITY.ca_cert, site_keys=None) == []
    assert canonical_provenance(stored["provenance"]).startswith(b"consortia.provenance/1\n{")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("rounds", 1, "global_model_sha256"), "d" * 64),
        (("privacy", "noise_multiplier"), 0.5),
        (("audit_log", "records"), 11),
        (("participants", 1, "role"), "train"),
    ],
)
def test_tampered_field_is_found(path: tuple[Any, ...], value: Any) -> None:
    document = _signed()
    target = document["provenance"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert verify_provenance(document, ca_cert=AUTHORITY.ca_cert, site_keys=None) == [
        "server signature: invalid (the provenance was altered after signing)"
    ]


def test_server_certificate_must_come_from_the_ca() -> None:
    document = _signed()
    other = make_authority("Another CA")
    assert verify_provenance(document, ca_cert=other.ca_cert, site_keys=None) == [
        "server certificate: issued by 'CN=Consortia test CA', not by the CA 'CN=Another CA'"
    ]
    impostor = make_authority()  # same CA name, other key
    assert verify_provenance(document, ca_cert=impostor.ca_cert, site_keys=None) == [
        "server certificate: its signature does not verify with the CA's key"
    ]
    assert verify_provenance(document, ca_cert=AUTHORITY.server_cert, site_keys=None) == [
        "server certificate: issued by 'CN=Consortia test CA', not by the CA 'CN=consortia-server'",
        "CA certificate: not a CA (no basicConstraints CA:TRUE)",
    ]
    # a document signed by the impostor's own key verifies only without the CA check
    forged = _signed(impostor)
    assert verify_provenance(forged, ca_cert=None, site_keys=None) == []
    assert verify_provenance(forged, ca_cert=AUTHORITY.ca_cert, site_keys=None) == [
        "server certificate: its signature does not verify with the CA's key"
    ]


def test_certificate_validity_at_signing_time() -> None:
    expired = make_authority(not_before=NOW - timedelta(days=30), not_after=NOW - timedelta(days=2))
    problems = verify_provenance(_signed(expired), ca_cert=expired.ca_cert, site_keys=None)
    assert len(problems) == 1 and problems[0].startswith(
        "server certificate: not valid at signing time"
    )


def test_signing_refuses_bad_input() -> None:
    with pytest.raises(ProvenanceError, match="not the key of the server certificate"):
        sign_provenance(_provenance(), site_key(), AUTHORITY.server_cert_pem)
    incomplete = _provenance()
    del incomplete["rounds"]
    incomplete["audit_log"]["head"] = None
    with pytest.raises(
        ProvenanceError, match=r"provenance\.rounds: missing; provenance\.audit_log\.head"
    ):
        sign_provenance(incomplete, AUTHORITY.server_key, AUTHORITY.server_cert_pem)
    p256 = make_authority(curve=ec.SECP256R1())
    with pytest.raises(ProvenanceError, match="secp256r1, expected secp384r1"):
        sign_provenance(_provenance(), p256.server_key, p256.server_cert_pem)
    with pytest.raises(ProvenanceError, match="not a PEM certificate"):
        sign_provenance(_provenance(), AUTHORITY.server_key, b"junk")


def test_countersign_and_verify() -> None:
    document = _signed()
    original = copy.deepcopy(document)
    signed = countersign(document, "site-a", SITE_A, ca_cert=AUTHORITY.ca_cert)
    signed = countersign(signed, "site-b", SITE_B)
    assert document == original  # the input is not modified
    assert [s["signer"] for s in signed["signatures"]] == ["server", "site:site-a", "site:site-b"]
    assert signed["signatures"][1]["public_key"].startswith("ecdsa-sha2-nistp384 ")
    assert verify_provenance(signed, ca_cert=AUTHORITY.ca_cert, site_keys=KEYS) == []
    signed["provenance"]["status"] = "failed"
    assert verify_provenance(signed, ca_cert=None, site_keys=None) == [
        "server signature: invalid (the provenance was altered after signing)",
        "countersignature of site site-a: invalid (the provenance was altered after it was signed)",
        "countersignature of site site-b: invalid (the provenance was altered after it was signed)",
    ]


def test_duplicate_countersignature_is_refused() -> None:
    signed = countersign(_signed(), "site-a", SITE_A)
    with pytest.raises(ProvenanceError, match="site site-a has already countersigned"):
        countersign(signed, "site-a", SITE_A)
    signed["signatures"].append(copy.deepcopy(signed["signatures"][1]))
    assert verify_provenance(signed, ca_cert=None, site_keys=None) == [
        "site site-a countersigned more than once"
    ]


def test_site_key_must_be_the_registered_one() -> None:
    signed = countersign(_signed(), "site-a", SITE_B)  # site-b's key under site-a's name
    assert verify_provenance(signed, ca_cert=None, site_keys=None) == []
    assert verify_provenance(signed, ca_cert=None, site_keys=KEYS) == [
        "countersignature of site site-a: signed with a key other than the site's registered key"
    ]
    assert verify_provenance(signed, ca_cert=None, site_keys={"site-b": SITE_B.public_key()}) == [
        "countersignature of site site-a: no registered key was given for this site"
    ]


def test_countersign_refuses_what_does_not_verify() -> None:
    document = _signed()
    with pytest.raises(ProvenanceError, match="not among the run's participants"):
        countersign(document, "site-z", site_key())
    with pytest.raises(ProvenanceError, match="not countersigning: server certificate: issued"):
        countersign(document, "site-a", SITE_A, ca_cert=make_authority("Another CA").ca_cert)
    document["provenance"]["rounds"].pop()
    with pytest.raises(ProvenanceError, match="not countersigning: server signature: invalid"):
        countersign(document, "site-a", SITE_A)
    with pytest.raises(ProvenanceError, match="'signatures' is not a list"):
        countersign({"provenance": _provenance()}, "site-a", SITE_A)


def test_malformed_documents(tmp_path: Path) -> None:
    document = _signed()
    document["signatures"][0]["signature"] = "not base64!"
    assert verify_provenance(document, ca_cert=None, site_keys=None) == [
        "server signature: invalid (the provenance was altered after signing)"
    ]
    document["signatures"] = document["signatures"] * 2
    assert verify_provenance(document, ca_cert=None, site_keys=None) == [
        "2 server signatures, expected exactly one"
    ]
    document["signatures"] = []
    assert verify_provenance(document, ca_cert=None, site_keys=None) == [
        "unsigned (written by a server without its key): nothing vouches for its content"
    ]
    path = tmp_path / "provenance.json"
    path.write_text("{not json")
    with pytest.raises(ProvenanceError, match=r"provenance\.json: not a JSON document"):
        read_provenance(path)
    path.write_text("[]")
    with pytest.raises(ProvenanceError, match="not a provenance document"):
        read_provenance(path)
