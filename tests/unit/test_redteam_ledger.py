"""Red-team F9 (issue 19): a deleted or truncated privacy ledger started fresh or opened
fine, so a site's spent budget could be reset by deleting or cutting its ledger file.

The node records every DP round it trains in its own hash-chained audit log
(`privacy_spent`, with the data set's fingerprint and the epsilon after the round). On
opening a ledger to train, the node cross-checks it against that log and refuses to train
when the ledger is missing, has fewer entries, or a lower epsilon than the log records.

Every train reply carries the ledger's head (the hash of its last entry and its entry
count); the server records it per round and in the provenance, and `consortia audit
privacy --ledger` flags a ledger that no longer holds a head the server recorded: a site
that deletes or cuts its ledger and its audit log together after a run is caught there.

The attacks run through the site's real ClientApp (the harness of
`tests/unit/test_redteam_site_rounds.py`: real demo npz, site config, approval, DP-SGD) and
alter the real ledger file on disk between rounds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import pytest
from flwr.app import Message

from consortia.common.audit.log import AUDIT_LOG_FILE, read_audit_log
from consortia.common.config.settings import Role
from consortia.common.privacy.ledger import PrivacyLedger
from consortia.common.wire import records as rk
from consortia.common.wire.run_identity import RunIdentity
from consortia.server.audit.privacy_audit import audit_privacy
from consortia.server.exchange.sites import Site as ServerSite
from consortia.server.exchange.updates import accept_update
from consortia.server.run.folder import RunFolder
from consortia.server.run.privacy import RunPrivacy, SitePrivacy
from consortia.server.run.provenance import build_provenance
from tests.unit.test_redteam_site_rounds import NODE, TRAIN_CASES, Site, _error, _settings
from tests.unit.test_redteam_site_rounds import site as site

pytestmark = pytest.mark.usefixtures("server_task_identity")

GENERIC = "the site's privacy ledger is unusable; see node log"


def _trained(rounds: int, site: Path) -> tuple[Site, Path]:
    north = Site(site, _settings(rounds=rounds + 1, privacy={"noise_multiplier": 2.0}))
    for round_number in range(1, rounds + 1):
        reply = north.train(round_number)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    (path,) = north.site.ledger_dir.glob("*.json")
    return north, path


def _refused(north: Site, round_number: int, caplog: pytest.LogCaptureFixture) -> str:
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code, reason = _error(north.train(round_number))
    assert code == rk.ERROR_PRIVACY_BUDGET
    assert reason == GENERIC  # no path, no numbers to the server
    return caplog.text


def test_control_the_audit_log_records_each_spend_and_training_goes_on(site: Path) -> None:
    north, path = _trained(2, site)
    records = read_audit_log(north.site.state_path / AUDIT_LOG_FILE)
    spent = [r for r in records if r["event"] == "privacy_spent"]
    assert [r["dataset_fingerprint"] for r in spent] == [path.stem] * 2
    assert not north.train(3).has_error()
    assert len(PrivacyLedger.load(path).entries) == 3


def test_f9_a_deleted_ledger_is_refused(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    north, path = _trained(1, site)
    path.unlink()
    log = _refused(north, 2, caplog)
    assert str(path) in log and "missing" in log
    assert not path.exists()  # no fresh ledger was started


def test_f9_a_truncated_ledger_is_refused(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    north, path = _trained(2, site)
    state = json.loads(path.read_text(encoding="utf-8"))
    state["entries"] = state["entries"][:1]  # a valid prefix of the hash chain
    path.write_text(json.dumps(state), encoding="utf-8")
    assert len(PrivacyLedger.load(path).entries) == 1  # the ledger alone opens fine
    log = _refused(north, 3, caplog)
    assert str(path) in log and "1 entry" in log and "2 DP rounds" in log
    assert len(PrivacyLedger.load(path).entries) == 1


def test_f9_a_rewritten_ledger_with_a_lower_epsilon_is_refused(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    north, path = _trained(2, site)
    original = PrivacyLedger.load(path)
    forged = PrivacyLedger(original.dataset_fingerprint, original.site)
    for entry in original.entries:  # same count, a fresh valid chain, a tenth of the epsilon
        forged.append(entry.model_copy(update={"epsilon": entry.epsilon / 10}))
    forged.save(path)
    log = _refused(north, 3, caplog)
    assert str(path) in log and "lower" in log


def test_f9_an_emptied_ledger_is_refused(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    north, path = _trained(1, site)
    original = PrivacyLedger.load(path)
    PrivacyLedger(original.dataset_fingerprint, original.site).save(path)
    log = _refused(north, 2, caplog)
    assert str(path) in log


# -- the ledger head travels with every train reply into the run's records ---------------


def _run_records(north: Site, replies: list[Message], run_dir: Path, fingerprint: str) -> None:
    """The server's side: each reply checked by `accept_update`, and what it carries
    recorded in the run folder as `server/run/federation.py` records it (per round: the
    participants, privacy records and ledger heads; the last head per site, the sites)."""
    folder = RunFolder(run_dir, {"run_name": "run-a"})
    privacy = RunPrivacy(north.settings)
    privacy.add_site("north", SitePrivacy(fingerprint, 10.0, 1e-5, 0.0))
    server_site = ServerSite(NODE, "north", Role.TRAIN, TRAIN_CASES, 4, fingerprint)
    folder.stage(sites=[asdict(server_site) | {"role": server_site.role.value}])
    for round_number, reply in enumerate(replies, start=1):
        update = accept_update(server_site, reply, north.weights, privacy, dp=True)
        assert update.privacy is not None and update.ledger_head is not None
        folder.update_round(
            round_number,
            participants=["north"],
            privacy={"north": update.privacy},
            ledger_heads={"north": update.ledger_head},
        )
        folder.add_ledger_heads({"north": update.ledger_head})
    folder.update(privacy=privacy.section())


def _audited(run_dir: Path, ledger: Path) -> set[str]:
    audit = audit_privacy(run_dir, [ledger])
    return {flag.kind for flag in audit.flags if flag.site == "north"}


def test_f9_every_train_reply_carries_the_ledger_head(site: Path) -> None:
    north = Site(site, _settings(rounds=3, privacy={"noise_multiplier": 2.0}))
    reply = north.train(1)
    (path,) = north.site.ledger_dir.glob("*.json")
    head = reply.content.config_records[rk.LEDGER_HEAD_KEY]
    ledger = PrivacyLedger.load(path)
    assert head[rk.LEDGER_HEAD_ENTRIES] == len(ledger.entries) == 1
    assert head[rk.LEDGER_HEAD_HASH] == ledger.head.sha256


def test_f9_a_ledger_cut_back_after_the_run_is_flagged_by_the_audit(
    site: Path, tmp_path: Path
) -> None:
    """Two runs' rounds in the ledger; after the second run the site deletes its ledger
    and its node audit log (the node's own cross-check has nothing left to compare) and
    keeps a fresh, valid ledger of the last run's rounds only: its lifetime epsilon falls
    to that run's. Every entry the server recorded is still there; the heads the replies
    carried are not (the copied epsilons also no longer match their recomputation from
    the shorter history, flagged as before)."""
    north = Site(site, _settings(rounds=3, privacy={"noise_multiplier": 2.0}))
    assert not north.train(1, run_id="run-0").has_error()
    replies = [north.train(round_number) for round_number in (1, 2)]
    assert not any(reply.has_error() for reply in replies)
    (path,) = north.site.ledger_dir.glob("*.json")
    run_dir = tmp_path / "runs" / "run-a"
    _run_records(north, replies, run_dir, path.stem)
    assert "ledger_head_missing" not in _audited(run_dir, path)  # control: the real ledger

    original = PrivacyLedger.load(path)
    forged = PrivacyLedger(original.dataset_fingerprint, original.site)
    for entry in original.run_entries("run-a"):
        forged.append(entry)
    forged.save(path)
    (north.site.state_path / AUDIT_LOG_FILE).unlink()
    assert "ledger_head_missing" in _audited(run_dir, path)


def test_f9_a_ledger_truncated_after_the_run_is_flagged_by_the_audit(
    site: Path, tmp_path: Path
) -> None:
    north = Site(site, _settings(rounds=3, privacy={"noise_multiplier": 2.0}))
    replies = [north.train(round_number) for round_number in (1, 2)]
    (path,) = north.site.ledger_dir.glob("*.json")
    run_dir = tmp_path / "runs" / "run-a"
    _run_records(north, replies, run_dir, path.stem)
    state = json.loads(path.read_text(encoding="utf-8"))
    state["entries"] = state["entries"][:1]  # a valid prefix of the hash chain
    path.write_text(json.dumps(state), encoding="utf-8")
    assert "ledger_head_missing" in _audited(run_dir, path)


def test_f9_the_provenance_names_each_participant_s_ledger_head(site: Path, tmp_path: Path) -> None:
    north = Site(site, _settings(rounds=3, privacy={"noise_multiplier": 2.0}))
    replies = [north.train(1)]
    (path,) = north.site.ledger_dir.glob("*.json")
    run_dir = tmp_path / "runs" / "run-a"
    _run_records(north, replies, run_dir, path.stem)
    folder = RunFolder(run_dir, {}, results=json.loads((run_dir / "results.json").read_text()))
    folder.stage(started_at="2026-12-07T00:00:00Z", status="completed")
    provenance = build_provenance(folder, north.settings, RunIdentity.of(north.settings))
    [participant] = provenance.participants
    assert participant["ledger_head"] == {
        "sha256": PrivacyLedger.load(path).head.sha256,
        "entries": 1,
    }
