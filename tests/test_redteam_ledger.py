"""Red-team F9 (issue 19): a deleted or truncated privacy ledger started fresh or opened
fine, so a site's spent budget could be reset by deleting or cutting its ledger file.

The node records every DP round it trains in its own hash-chained audit log
(`privacy_spent`, with the data set's fingerprint and the epsilon after the round). On
opening a ledger to train, the node cross-checks it against that log and refuses to train
when the ledger is missing, has fewer entries, or a lower epsilon than the log records.

The attacks run through the site's real ClientApp (the harness of
`tests/test_redteam_site_rounds.py`: real demo npz, site config, approval, DP-SGD) and
alter the real ledger file on disk between rounds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from consortia.common import records as rk
from consortia.common.audit_log import AUDIT_LOG_FILE, read_audit_log
from consortia.common.privacy_ledger import PrivacyLedger
from tests.test_redteam_site_rounds import Site, _error, _settings
from tests.test_redteam_site_rounds import site as site

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
        forged.append(replace(entry, epsilon=entry.epsilon / 10))
    forged.save(path)
    log = _refused(north, 3, caplog)
    assert str(path) in log and "lower" in log


def test_f9_an_emptied_ledger_is_refused(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    north, path = _trained(1, site)
    original = PrivacyLedger.load(path)
    PrivacyLedger(original.dataset_fingerprint, original.site).save(path)
    log = _refused(north, 2, caplog)
    assert str(path) in log
