"""`consortia audit verify` and `consortia audit countersign` on a run folder and a node
state folder written with our own `AuditLog` and provenance: exit 0 when intact, 1 with
each kind of alteration named, 2 for unreadable input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from consortia.common.audit.log import (
    AGGREGATED,
    GLOBAL_MODEL,
    NODE_STARTED,
    PROVENANCE_COUNTERSIGNED,
    RUN_APPROVED,
    RUN_FINISHED,
    RUN_STARTED,
    SITE_JOINED,
    UPDATE_RECEIVED,
    UPDATE_SENT,
    AuditLog,
    node_log_label,
    read_audit_log,
    server_log_label,
)
from consortia.common.audit.provenance import (
    Provenance,
    provenance_sha256,
    sign_provenance,
    write_provenance,
)
from consortia.common.files import sha256_file
from consortia.server.audit.cli import audit_app
from tests.support.provenance_keys import NOW, make_authority, site_key, write_site_key

RUN_ID = "run-7"
AUTHORITY = make_authority()
SITE_KEYS = {"site-a": site_key(), "site-b": site_key()}


@dataclass
class Layout:
    run: Path
    node: Path
    ca: Path
    keys: dict[str, tuple[Path, Path]]  # site -> (private, public)

    @property
    def provenance(self) -> Path:
        return self.run / "provenance.json"

    def site_key_args(self, **pairs: str) -> list[str]:
        args = []
        for site, owner in pairs.items():
            args += ["--site-key", f"{site}={self.keys[owner][1]}"]
        return args


@pytest.fixture()
def layout(tmp_path: Path) -> Layout:
    """A finished run of two sites (3 model versions) and site-a's node state folder."""
    run = tmp_path / "runs" / "study-1"
    (run / "checkpoints").mkdir(parents=True)
    node_dir = tmp_path / "nodes" / "site-a"
    node = AuditLog.open(node_dir / "audit.jsonl", node_log_label("site-a"))
    node.append(NODE_STARTED, version="0.1.0")
    node.append(RUN_APPROVED, run_id=RUN_ID, config_hash="c" * 64)
    log = AuditLog.open(run / "audit.jsonl", server_log_label(RUN_ID))
    log.append(RUN_STARTED, run_id=RUN_ID, config_hash="c" * 64, app_hash="a" * 64)
    log.append(SITE_JOINED, site="site-a", role="train", dataset_fingerprint="1" * 64)
    log.append(SITE_JOINED, site="site-b", role="holdout", dataset_fingerprint="2" * 64)
    rounds = []
    for number in range(3):
        checkpoint = run / "checkpoints" / f"round-{number:03d}.pt"
        checkpoint.write_bytes(f"global model after round {number}".encode())
        digest = sha256_file(checkpoint)
        if number:
            node.append(UPDATE_SENT, run_id=RUN_ID, round=number, sha256="9" * 64)
            log.append(UPDATE_RECEIVED, round=number, site="site-a", sha256="9" * 64)
            log.append(AGGREGATED, round=number, participants=["site-a"])
        log.append(GLOBAL_MODEL, round=number, sha256=digest, checkpoint=checkpoint.name)
        rounds.append({"round": number, "global_model_sha256": digest, "participants": ["site-a"]})
    log.append(RUN_FINISHED, status="completed", rounds=2)
    (run / "results.json").write_text(json.dumps({"schema": "consortia.results/1"}))
    provenance = Provenance(
        run_id=RUN_ID,
        run_name="study-1",
        config_hash="c" * 64,
        app_hash="a" * 64,
        started_at="2026-03-01T12:00:00.000Z",
        finished_at=datetime.now(UTC).isoformat(),  # the server signs after the last record
        status="completed",
        participants=[
            {
                "site": "site-a",
                "role": "train",
                "dataset_fingerprint": "1" * 64,
                "audit_head": node.head,
            },
            {"site": "site-b", "role": "holdout", "dataset_fingerprint": "2" * 64},
        ],
        rounds=rounds,
        privacy={"noise_multiplier": 1.1, "max_grad_norm": 1.0},
        secure_aggregation={"enabled": False, "parameters": {}},
        audit_log={"file": "audit.jsonl", "head": log.head, "records": log.seq + 1},
    )
    document = sign_provenance(
        provenance.to_dict(), AUTHORITY.server_key, AUTHORITY.server_cert_pem
    )
    write_provenance(run / "provenance.json", document)
    node.append(RUN_APPROVED, run_id="run-8", config_hash="d" * 64)  # the node goes on
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    keys = {site: write_site_key(key, keys_dir, site) for site, key in SITE_KEYS.items()}
    return Layout(run, node_dir, AUTHORITY.write_ca(keys_dir / "ca.pem"), keys)


def _invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(audit_app, [str(arg) for arg in args])
    return result.exit_code, result.output


def _verify(*args: str | Path) -> tuple[int, dict[str, Any]]:
    code, output = _invoke("verify", *args, "--json")
    return code, json.loads(output)


def _drop_last_lines(path: Path, count: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-count]))


def test_intact_run_folder(layout: Layout) -> None:
    code, output = _invoke("verify", layout.run)
    assert code == 3, output  # without the CA nobody can say who signed the provenance
    assert "NOT VERIFIED" in output and "pass --ca CA.pem" in output
    assert "ALTERED" not in output
    code, output = _invoke("verify", layout.run, "--ca", layout.ca)
    assert code == 0, output
    assert "INTACT" in output and "signed by server" in output
    code, report = _verify(layout.run, "--ca", layout.ca)
    assert code == 0 and report["ok"] and report["problems"] == []
    assert report["kind"] == "run folder"
    assert report["audit_log"]["records"] == 12
    assert report["audit_log"]["label"] == f"server-run:{RUN_ID}"
    assert report["provenance"]["signers"] == ["server"]
    assert report["notes"] == ["provenance.json: no site has countersigned it"]


def test_countersign_then_verify_with_registered_keys(layout: Layout) -> None:
    node_log = layout.node / "audit.jsonl"
    for site in ("site-a", "site-b"):
        code, output = _invoke(
            "countersign",
            layout.provenance,
            "--site-key",
            layout.keys[site][0],
            "--site",
            site,
            "--ca",
            layout.ca,
            *(["--audit-log", str(node_log)] if site == "site-a" else []),
        )
        assert code == 0, output
    (record,) = [r for r in read_audit_log(node_log) if r["event"] == PROVENANCE_COUNTERSIGNED]
    signed = json.loads(layout.provenance.read_text())
    assert record["run_id"] == RUN_ID and record["provenance_sha256"] == provenance_sha256(signed)
    assert "countersigned by site site-b (signatures: server, site:site-a, site:site-b)" in output
    code, report = _verify(
        layout.run,
        "--ca",
        layout.ca,
        *layout.site_key_args(**{"site-a": "site-a", "site-b": "site-b"}),
    )
    assert code == 0 and report["problems"] == [] and report["notes"] == []
    code, output = _invoke(
        "countersign", layout.provenance, "--site-key", layout.keys["site-a"][0], "--site", "site-a"
    )
    assert code == 1 and "site site-a has already countersigned" in output
    code, report = _verify(
        layout.run,
        "--ca",
        layout.ca,
        *layout.site_key_args(**{"site-a": "site-b", "site-b": "site-b"}),
    )
    assert code == 1 and report["problems"] == [
        "provenance.json: countersignature of site site-a: signed with a key other than the "
        "site's registered key"
    ]


def test_edited_audit_record(layout: Layout) -> None:
    log = layout.run / "audit.jsonl"
    log.write_text(log.read_text().replace('"role": "holdout"', '"role": "train"'))
    code, output = _invoke("verify", layout.run, "--ca", layout.ca)
    assert code == 1 and "ALTERED OR DAMAGED" in output
    code, report = _verify(layout.run, "--ca", layout.ca)
    assert report["problems"] == [
        "audit.jsonl: line 4 (seq 3, site_joined): content does not match its hash (record edited)"
    ]


def test_truncated_server_log(layout: Layout) -> None:
    _drop_last_lines(layout.run / "audit.jsonl", 2)
    code, report = _verify(layout.run, "--ca", layout.ca)
    assert code == 1 and len(report["problems"]) == 2
    assert "the log ends at" in report["problems"][0] and "truncated tail" in report["problems"][0]
    assert report["problems"][1] == "provenance.json: records 12 audit records, audit.jsonl has 10"


def test_altered_checkpoint_and_model_hash(layout: Layout) -> None:
    (layout.run / "checkpoints" / "round-001.pt").write_bytes(b"another model")
    (layout.run / "checkpoints" / "round-002.pt").unlink()
    code, report = _verify(layout.run, "--ca", layout.ca)
    assert code == 1 and report["problems"] == [
        "checkpoints/round-001.pt: its SHA-256 differs from the provenance's "
        "global_model_sha256 (the checkpoint was replaced or altered)"
    ]
    assert (
        "checkpoints/round-002.pt: not present, its model hash was not checked" in report["notes"]
    )


def test_tampered_provenance_and_wrong_ca(layout: Layout, tmp_path: Path) -> None:
    document = json.loads(layout.provenance.read_text())
    document["provenance"]["participants"].pop()
    layout.provenance.write_text(json.dumps(document))
    code, report = _verify(layout.run, "--ca", layout.ca)
    assert code == 1 and report["problems"] == [
        "provenance.json: server signature: invalid (the provenance was altered after signing)"
    ]
    other_ca = make_authority("Another CA").write_ca(tmp_path / "other-ca.pem")
    code, report = _verify(layout.run, "--ca", other_ca)
    assert code == 1 and any("not by the CA 'CN=Another CA'" in p for p in report["problems"])
    code, output = _invoke(
        "countersign", layout.provenance, "--site-key", layout.keys["site-a"][0], "--site", "site-a"
    )
    assert code == 1 and "refused" in output and "server signature: invalid" in output


def test_run_folder_without_provenance(layout: Layout) -> None:
    """Red-team F11: provenance.json deleted and the audit tail cut used to verify as OK
    with only a note; now it is a problem unless the auditor says the run is unfinished."""
    layout.provenance.unlink()
    _drop_last_lines(layout.run / "audit.jsonl", 2)  # undetectable without provenance
    code, report = _verify(layout.run, "--ca", layout.ca)
    assert code == 1 and report["provenance"] is None
    assert report["problems"][0].startswith("no provenance.json: the run did not finish")
    assert "--unfinished" in report["problems"][0]
    code, report = _verify(layout.run, "--ca", layout.ca, "--unfinished")
    assert code == 0 and report["provenance"] is None
    assert report["notes"][0].startswith("no provenance.json: the run did not finish")
    node_log = (layout.node / "audit.jsonl").read_bytes()
    (layout.run / "audit.jsonl").write_bytes(node_log)  # another party's log
    code, report = _verify(layout.run, "--ca", layout.ca, "--unfinished")
    assert code == 1 and report["problems"] == [
        "audit.jsonl: labelled 'node:site-a', not a server run log"
    ]


def test_node_state_folder(layout: Layout) -> None:
    code, report = _verify(layout.node)
    assert code == 0 and report["kind"] == "node state folder"
    assert "cannot be detected from the log alone" in report["notes"][0]
    code, report = _verify(layout.node, "--provenance", layout.provenance, "--ca", layout.ca)
    assert code == 0, report["problems"]
    _drop_last_lines(layout.node / "audit.jsonl", 3)  # back to before round 2's update
    code, report = _verify(layout.node)
    assert code == 0  # the limit: a node log's lost tail needs a record kept elsewhere
    code, report = _verify(layout.node, "--provenance", layout.provenance, "--ca", layout.ca)
    assert code == 1 and len(report["problems"]) == 1
    assert "recorded in the provenance of run run-7 is not in the log" in report["problems"][0]


def test_single_log_file(layout: Layout) -> None:
    log = layout.run / "audit.jsonl"
    code, report = _verify(log)
    assert code == 0 and report["kind"] == "audit log"
    code, report = _verify(log, "--provenance", layout.provenance, "--ca", layout.ca)
    assert code == 0, report["problems"]
    _drop_last_lines(log, 1)
    assert _verify(log)[0] == 0
    code, report = _verify(log, "--provenance", layout.provenance, "--ca", layout.ca)
    assert code == 1 and "truncated tail" in report["problems"][0]


def test_unreadable_input(layout: Layout, tmp_path: Path) -> None:
    assert _invoke("verify", tmp_path / "nowhere")[0] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = _invoke("verify", empty)
    assert code == 2 and "no audit.jsonl in this folder" in output
    code, output = _invoke("verify", layout.run, "--site-key", "site-a")
    assert code == 2 and "expected NAME=PUBLIC_KEY_FILE" in output
    code, output = _invoke("verify", layout.run, "--ca", layout.keys["site-a"][1])
    assert code == 2 and "not a PEM certificate" in output
    code, output = _invoke(
        "countersign", layout.provenance, "--site-key", layout.keys["site-a"][1], "--site", "site-a"
    )
    assert code == 2 and "not an OpenSSH private key" in output
    code, output = _invoke(
        "countersign",
        tmp_path / "none.json",
        "--site-key",
        layout.keys["site-a"][0],
        "--site",
        "site-a",
    )
    assert code == 2 and "cannot read" in output


def test_provenance_disagreeing_with_the_log(layout: Layout) -> None:
    """A validly signed provenance whose model hash is not the one the log recorded."""
    document = json.loads(layout.provenance.read_text())
    provenance = document["provenance"]
    provenance["rounds"][1]["global_model_sha256"] = "d" * 64
    write_provenance(
        layout.provenance,
        sign_provenance(provenance, AUTHORITY.server_key, AUTHORITY.server_cert_pem),
    )
    code, report = _verify(layout.run, "--ca", layout.ca)
    assert code == 1 and report["problems"] == [
        "round 1: the audit log's global model hash "
        f"{sha256_file(layout.run / 'checkpoints' / 'round-001.pt')[:12]}… differs from the "
        f"provenance's {'d' * 12}…",
        "checkpoints/round-001.pt: its SHA-256 differs from the provenance's "
        "global_model_sha256 (the checkpoint was replaced or altered)",
    ]


def test_a_countersignature_with_any_key_is_not_verified_without_the_registered_key(
    layout: Layout,
) -> None:
    """Red-team F8: a "site:X" countersignature made with any key used to pass unless the
    auditor passed --site-key; now it is NOT VERIFIED (exit 3) until the registered key
    is given, and ALTERED when that key is not the one that signed."""
    code, output = _invoke(
        "countersign", layout.provenance, "--site-key", layout.keys["site-b"][0], "--site", "site-a"
    )  # site-b's key, signing as site-a: a forgery
    assert code == 0, output
    code, report = _verify(layout.run, "--ca", layout.ca)
    assert code == 3 and report["verdict"] == "NOT VERIFIED", report
    assert report["problems"] == []
    assert any("site site-a was not checked" in item for item in report["unverified"])
    code, report = _verify(
        layout.run, "--ca", layout.ca, *layout.site_key_args(**{"site-a": "site-a"})
    )
    assert code == 1 and report["verdict"] == "ALTERED OR DAMAGED"
    assert any("other than the site's registered key" in p for p in report["problems"])


def test_a_back_dated_signing_time_is_detected(layout: Layout) -> None:
    """Red-team F8: a server key could sign today with `finished_at` set back to a time
    its certificate was valid; the audit log's last record bounds the signing time."""
    document = json.loads(layout.provenance.read_text())
    provenance = dict(document["provenance"])
    provenance["finished_at"] = (NOW - timedelta(hours=12)).isoformat()  # cert still valid
    resigned = sign_provenance(provenance, AUTHORITY.server_key, AUTHORITY.server_cert_pem)
    write_provenance(layout.provenance, resigned)
    code, report = _verify(layout.run, "--ca", layout.ca)
    assert code == 1, report
    assert any("the signing time was back-dated" in p for p in report["problems"])


def test_config_hash_command_matches_the_approval(tmp_path: Path) -> None:
    from consortia.common.config.settings import load_run_settings
    from consortia.common.wire.run_identity import config_hash

    config = Path(__file__).parents[2] / "configs" / "run-segmentation.toml"
    code, output = _invoke("config-hash", config)
    assert code == 0, output
    assert output.split()[0] == config_hash(load_run_settings(config))
    broken = tmp_path / "broken.toml"
    broken.write_text('[run]\nrounds = "five"\n')
    code, output = _invoke("config-hash", broken)
    assert code == 2 and "broken.toml [run]: rounds" in output


def test_compare_two_provenance_copies(layout: Layout, tmp_path: Path) -> None:
    copy = tmp_path / "site-copy.json"
    document = json.loads(layout.provenance.read_text())
    copy.write_text(json.dumps(document, indent=4))  # other formatting, same content
    code, output = _invoke("compare", layout.provenance, copy)
    assert code == 0 and output.startswith("SAME signed content"), output
    code, output = _invoke(
        "countersign", copy, "--site-key", layout.keys["site-a"][0], "--site", "site-a"
    )
    assert code == 0, output  # an added countersignature does not change the content
    assert _invoke("compare", layout.provenance, copy)[0] == 0
    document["provenance"]["status"] = "failed"
    copy.write_text(json.dumps(document))
    code, output = _invoke("compare", layout.provenance, copy)
    assert code == 1 and "DIFFERENT" in output and "fields that differ: status" in output
    copy.write_text("{}")
    assert _invoke("compare", layout.provenance, copy)[0] == 2


# -- red-team F8: certificate and key rotation ---------------------------------------------


def _issue(not_before: datetime, *, ca: Any = None) -> tuple[Any, bytes]:
    """A server key and certificate issued by the test CA (or by `ca`: (key, cert))."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key, ca_cert = ca or (AUTHORITY.ca_key, AUTHORITY.ca_cert)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "consortia-server")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def _resign(layout: Layout, key: Any, cert_pem: bytes) -> None:
    document = json.loads(layout.provenance.read_text())
    write_provenance(layout.provenance, sign_provenance(document["provenance"], key, cert_pem))


def _history(layout: Layout, *pems: bytes) -> list[str]:
    args = []
    for index, pem in enumerate(pems):
        path = layout.ca.parent / f"server-{index}.pem"
        path.write_bytes(pem)
        args += ["--server-cert", str(path)]
    return args


def test_f8_a_provenance_signed_with_a_rotated_out_certificate_is_flagged(layout: Layout) -> None:
    """The server certificate was replaced an hour ago (the old key was stolen, say);
    the old key signs a provenance of a run that ended now. Its certificate is still
    within its validity, so only the rotation history shows it must no longer sign."""
    _, new_pem = _issue(NOW - timedelta(hours=1))
    old_pem = AUTHORITY.server_cert_pem  # the layout's provenance is signed with it
    code, report = _verify(layout.run, "--ca", layout.ca)
    assert code == 0, "without the history the old key's signature passes"
    code, report = _verify(layout.run, "--ca", layout.ca, *_history(layout, old_pem, new_pem))
    assert code == 1 and report["verdict"] == "ALTERED OR DAMAGED"
    assert any("rotated out" in problem for problem in report["problems"]), report


def test_f8_the_current_certificate_signs_after_the_rotation_and_the_old_one_before(
    layout: Layout,
) -> None:
    new_key, new_pem = _issue(NOW - timedelta(hours=1))
    old_pem = AUTHORITY.server_cert_pem
    _resign(layout, new_key, new_pem)  # the successor signs after the rotation: fine
    code, report = _verify(layout.run, "--ca", layout.ca, *_history(layout, old_pem, new_pem))
    assert code == 0 and report["problems"] == [], report
    # a rotation planned for later: the old certificate still signs today
    _, later_pem = _issue(datetime.now(UTC) + timedelta(hours=1))
    _resign(layout, AUTHORITY.server_key, old_pem)
    code, report = _verify(layout.run, "--ca", layout.ca, *_history(layout, old_pem, later_pem))
    assert code == 0 and report["problems"] == [], report


def test_f8_a_signer_outside_the_history_or_a_history_from_another_ca_is_flagged(
    layout: Layout,
) -> None:
    _, new_pem = _issue(NOW - timedelta(hours=1))
    code, report = _verify(layout.run, "--ca", layout.ca, *_history(layout, new_pem))
    assert code == 1 and any("not among the server certificates" in p for p in report["problems"])
    other = make_authority("another CA")
    _, foreign_pem = _issue(NOW - timedelta(hours=1), ca=(other.ca_key, other.ca_cert))
    history = _history(layout, AUTHORITY.server_cert_pem, foreign_pem)
    code, report = _verify(layout.run, "--ca", layout.ca, *history)
    assert code == 1 and any("not issued by the CA" in p for p in report["problems"]), report
    code, output = _invoke("verify", layout.run, *history)
    assert code == 2 and "--server-cert needs --ca" in output


def test_f8_a_site_key_replaced_before_the_run_ended_no_longer_countersigns(
    layout: Layout,
) -> None:
    """site-a replaced its key (`site register --replace`) before the run ended; a
    countersignature with its old key (stolen, say) must not count. Before the fix a
    site could be given one key only."""
    old_private, old_public = layout.keys["site-a"]
    new_public = layout.keys["site-b"][1]  # stands in for site-a's new key
    code, output = _invoke(
        "countersign", layout.provenance, "--site-key", old_private, "--site", "site-a"
    )
    assert code == 0, output
    finished = datetime.fromisoformat(
        json.loads(layout.provenance.read_text())["provenance"]["finished_at"]
    )
    for replaced, expected in (
        (finished - timedelta(hours=1), 1),
        (finished + timedelta(hours=1), 0),
    ):
        keys = [
            "--site-key",
            f"site-a={old_public}",
            "--site-key",
            f"site-a={new_public}@{replaced.isoformat()}",
        ]
        code, report = _verify(layout.run, "--ca", layout.ca, *keys)
        assert code == expected, report
    assert any(
        "a replaced key no longer signs" in p
        for p in _verify(
            layout.run,
            "--ca",
            layout.ca,
            "--site-key",
            f"site-a={old_public}",
            "--site-key",
            f"site-a={new_public}@{(finished - timedelta(hours=1)).isoformat()}",
        )[1]["problems"]
    )
    code, output = _invoke(
        "verify",
        layout.run,
        "--site-key",
        f"site-a={old_public}",
        "--site-key",
        f"site-a={new_public}",
    )
    assert code == 2 and "@SINCE" in output
