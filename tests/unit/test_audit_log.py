"""Audit logs: records written by `AuditLog` verify; every kind of tampering or damage is
found and named by its line; reopening and concurrent writers keep one valid chain."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortia.common.audit.log import (
    LOG_OPENED,
    PRIVACY_SPENT,
    UPDATE_SENT,
    AuditLog,
    AuditLogError,
    node_log_label,
    read_audit_log,
    verify_audit_log,
)
from consortia.common.crypto.hash_chain import chain_hash, genesis_for

LABEL = node_log_label("site-a")


def _log(tmp_path: Path, appends: int = 6) -> tuple[Path, AuditLog]:
    """A node log: `log_opened` then `appends` records (seq 0 .. appends)."""
    path = tmp_path / "state" / "audit.jsonl"
    log = AuditLog.open(path, LABEL)
    for round_ in range(1, appends + 1):
        log.append(UPDATE_SENT, run_id="run-1", round=round_, sha256=f"{round_:064x}")
    return path, log


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _rechain(records: list[dict[str, Any]], label: str = LABEL) -> list[str]:
    """Recompute every prev_hash and hash (what a forger with the format does)."""
    previous = genesis_for(label)
    lines = []
    for record in records:
        record = {k: v for k, v in record.items() if k != "hash"}
        record["prev_hash"] = previous
        record["hash"] = previous = chain_hash(record)
        lines.append(json.dumps(record))
    return lines


def _problems(path: Path, **kwargs: Any) -> list[str]:
    report = verify_audit_log(path, **kwargs)
    assert not report.ok
    return report.problems


def test_written_log_verifies(tmp_path: Path) -> None:
    path, log = _log(tmp_path)
    report = verify_audit_log(path, expected_head=log.head, expected_label=LABEL)
    assert report.ok, report.problems
    assert report.head == log.head and report.label == LABEL
    assert log.seq == 6 and len(report.records) == 7
    first, second = report.records[:2]
    assert first["event"] == LOG_OPENED and first["label"] == LABEL and first["seq"] == 0
    assert first["prev_hash"] == genesis_for(LABEL)
    assert list(second) == [
        "seq",
        "time",
        "event",
        "run_id",
        "round",
        "sha256",
        "prev_hash",
        "hash",
    ]
    assert second["prev_hash"] == first["hash"] and second["time"].endswith("Z")
    assert read_audit_log(path) == report.records


def test_values_are_stored_as_json(tmp_path: Path) -> None:
    path, log = _log(tmp_path, appends=0)
    record = log.append(
        PRIVACY_SPENT,
        epsilon=np.float32(1.5),
        steps=np.int64(40),
        loss=float("nan"),
        history=(np.array([1.0, np.inf]), {"q": 0.1}),
    )
    assert record["epsilon"] == 1.5 and record["steps"] == 40 and record["loss"] is None
    assert record["history"] == [[1.0, None], {"q": 0.1}]
    assert read_audit_log(path)[-1] == record
    with pytest.raises(ValueError, match="reserved"):
        log.append("note", seq=3)
    with pytest.raises(ValueError, match="event name"):
        log.append("Bad Event")
    with pytest.raises(ValueError, match=LOG_OPENED):
        log.append(LOG_OPENED)
    with pytest.raises(TypeError):
        log.append("note", path=tmp_path)
    assert verify_audit_log(path).ok


def test_edited_field_is_found(tmp_path: Path) -> None:
    path, _ = _log(tmp_path)
    lines = _lines(path)
    record = json.loads(lines[2])
    record["round"] = 9
    lines[2] = json.dumps(record)
    _write(path, lines)
    problems = _problems(path)
    assert problems == [
        "line 3 (seq 2, update_sent): content does not match its hash (record edited)"
    ]
    with pytest.raises(AuditLogError, match=r"audit\.jsonl: line 3 .*edited"):
        read_audit_log(path)


def test_deleted_middle_line_is_found(tmp_path: Path) -> None:
    path, _ = _log(tmp_path)
    lines = _lines(path)
    del lines[3]
    _write(path, lines)
    problems = _problems(path)
    assert len(problems) == 2 and all(p.startswith("line 4 (seq 4") for p in problems)
    assert "prev_hash does not match line 3" in problems[0]
    assert "seq 4 follows seq 2: 1 record(s) missing" in problems[1]


def test_deleted_first_line_is_found(tmp_path: Path) -> None:
    path, _ = _log(tmp_path)
    _write(path, _lines(path)[1:])
    problems = _problems(path)
    assert problems and all(p.startswith("line 1 ") for p in problems)
    assert "first record is not the log's 'log_opened' record" in problems[0]
    assert any(
        "prev_hash is not the chain start" in p for p in _problems(path, expected_label=LABEL)
    )


def test_changed_first_record_is_found(tmp_path: Path) -> None:
    """Relabelling the log (even with the first record's hashes recomputed) breaks it."""
    path, _ = _log(tmp_path)
    lines = _lines(path)
    first = json.loads(lines[0])
    first["label"] = "node:site-b"
    lines[0] = _rechain([first], "node:site-b")[0]
    _write(path, lines)
    problems = _problems(path)
    assert problems == [
        "line 2 (seq 1, update_sent): prev_hash does not match line 1's hash (the record "
        "before it was removed, or this record was moved or forged)"
    ]
    assert any(
        "labelled 'node:site-b', expected 'node:site-a'" in p
        for p in _problems(path, expected_label=LABEL)
    )


def test_inserted_forged_line_is_found(tmp_path: Path) -> None:
    """A forged record with a correct own hash and a correct link to its predecessor."""
    path, _ = _log(tmp_path)
    lines = _lines(path)
    before = json.loads(lines[2])
    forged = {
        "seq": 3,
        "time": before["time"],
        "event": UPDATE_SENT,
        "run_id": "run-1",
        "round": 99,
        "prev_hash": before["hash"],
    }
    forged["hash"] = chain_hash(forged)
    lines.insert(3, json.dumps(forged))
    _write(path, lines)
    problems = _problems(path)
    assert any(
        p.startswith("line 5 (seq 3")
        and "hash of line 3, not of line 4: line(s) 4..4 were inserted" in p
        for p in problems
    ), problems
    assert any(
        p.startswith("line 5 (seq 3") and "seq 3 does not follow seq 3" in p for p in problems
    )


def test_swapped_lines_are_found(tmp_path: Path) -> None:
    path, _ = _log(tmp_path)
    lines = _lines(path)
    lines[3], lines[4] = lines[4], lines[3]
    _write(path, lines)
    problems = _problems(path)
    assert any(p.startswith("line 4 (seq 4") and "1 record(s) missing" in p for p in problems)
    assert any(p.startswith("line 5 (seq 3") and "does not follow seq 4" in p for p in problems)
    assert any(
        p.startswith("line 6 (seq 5") and "hash of line 4, not of line 5" in p for p in problems
    )


def test_truncated_tail_needs_the_expected_head(tmp_path: Path) -> None:
    path, log = _log(tmp_path)
    head = log.head
    _write(path, _lines(path)[:-2])
    assert verify_audit_log(path).ok  # the limit: a shorter chain is still a valid chain
    problems = _problems(path, expected_head=head)
    assert problems[0].startswith("line 5 (end of the log): the log ends at")
    assert "truncated tail" in problems[0]


def test_records_after_the_expected_head_are_found(tmp_path: Path) -> None:
    path, log = _log(tmp_path)
    head = log.head
    log.append(UPDATE_SENT, run_id="run-1", round=7)
    assert _problems(path, expected_head=head) == [
        f"1 record(s) after the expected head {head[:12]}… (seq 6): added after the head "
        "was recorded"
    ]
    node_head = {head: "the provenance of run-1"}
    assert verify_audit_log(path, expected_hashes=node_head).ok
    _write(path, _lines(path)[:5])
    assert (
        "recorded in the provenance of run-1 is not in the log"
        in _problems(path, expected_hashes=node_head)[0]
    )


def test_non_utc_timestamps_are_found(tmp_path: Path) -> None:
    path, _ = _log(tmp_path)
    records = [json.loads(line) for line in _lines(path)]
    records[2]["time"] = "2026-03-01T13:00:00.000+01:00"
    records[4]["time"] = "2026-03-01T12:00:00"
    _write(path, _rechain(records))
    assert _problems(path) == [
        "line 3 (seq 2, update_sent): time '2026-03-01T13:00:00.000+01:00' is not UTC (must "
        "end in Z or +00:00)",
        "line 5 (seq 4, update_sent): time '2026-03-01T12:00:00' is not UTC (must end in Z or "
        "+00:00)",
    ]
    records[2]["time"] = "2026-03-01T12:00:00+00:00"
    records[4]["time"] = "yesterday"
    _write(path, _rechain(records))
    assert _problems(path) == [
        "line 5 (seq 4, update_sent): time 'yesterday' is not an ISO-8601 timestamp"
    ]


def test_reopen_continues_one_chain(tmp_path: Path) -> None:
    path, first = _log(tmp_path, appends=2)
    second = AuditLog.open(path, LABEL)
    assert (second.head, second.seq) == (first.head, 2)
    second.append(UPDATE_SENT, run_id="run-2", round=1)
    first.append(UPDATE_SENT, run_id="run-2", round=2)  # sees second's record first
    third = AuditLog.open(path, LABEL)
    assert third.seq == 4 and third.head == first.head != second.head
    records = read_audit_log(path)
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["event"] for r in records].count(LOG_OPENED) == 1


def test_broken_or_foreign_log_is_never_appended_to(tmp_path: Path) -> None:
    path, _ = _log(tmp_path)
    with pytest.raises(AuditLogError, match="labelled 'node:site-a', expected 'node:site-b'"):
        AuditLog.open(path, node_log_label("site-b"))
    lines = _lines(path)
    lines[2] = lines[2].replace('"round": 2', '"round": 3')
    lines[4] = "not json"
    _write(path, lines)
    size = path.stat().st_size
    with pytest.raises(AuditLogError, match=r"audit\.jsonl: line 3 \(seq 2.*edited.*not appending"):
        AuditLog.open(path, LABEL)
    lines[2] = lines[2].replace('"round": 3', '"round": 2')
    _write(path, lines)
    with pytest.raises(AuditLogError, match=r"line 5: not valid JSON"):
        AuditLog.open(path, LABEL)
    assert path.stat().st_size == size


def test_torn_last_line(tmp_path: Path) -> None:
    path, _ = _log(tmp_path)
    intact = path.read_bytes()
    torn = b'{"seq": 7, "time": "2026-03-01T1'
    path.write_bytes(intact + torn)
    problems = _problems(path)
    assert problems == [
        "line 8: incomplete last line without a newline (a torn write: the writer stopped "
        "mid-line; the next AuditLog.open sets it aside)"
    ]
    with pytest.raises(AuditLogError, match=r"audit\.jsonl: line 8 is torn .*set_aside_torn_tail"):
        AuditLog.open(path, LABEL, set_aside_torn_tail=False)
    assert path.read_bytes() == intact + torn
    reopened = AuditLog.open(path, LABEL)  # the default: set aside, recorded in the chain
    (aside,) = path.parent.glob("audit.jsonl.torn-*")
    assert aside.read_bytes() == torn
    report = verify_audit_log(path)
    assert report.ok and len(report.records) == 8 and report.head == reopened.head
    assert report.records[-1]["event"] == "torn_tail_set_aside"
    assert report.records[-1]["bytes"] == len(torn) and report.records[-1]["line"] == 8
    assert report.notes and report.notes[0].startswith("line 8: the writer set aside a torn tail")
    assert path.read_bytes().startswith(intact)


def test_invalid_last_line_with_newline_is_torn_too(tmp_path: Path) -> None:
    """NUL bytes at the end: what some file systems leave after a power cut."""
    path, _ = _log(tmp_path, appends=1)
    path.write_bytes(path.read_bytes() + b"\x00\x00\x00\n")
    assert _problems(path) == [
        "line 3: not valid JSON (Expecting value at column 1) (a torn last line?)"
    ]
    log = AuditLog.open(path, LABEL)
    log.append(UPDATE_SENT, run_id="run-1", round=2)
    assert verify_audit_log(path).ok and log.seq == 3


def test_bad_line_before_the_last_is_not_torn(tmp_path: Path) -> None:
    path, _ = _log(tmp_path, appends=1)
    path.write_bytes(path.read_bytes() + b"\xff\n" + _lines(path)[-1].encode() + b"\n")
    problems = _problems(path)
    assert problems[0] == "line 3: not UTF-8 text"
    with pytest.raises(AuditLogError, match="line 3: not UTF-8 text; the log is broken"):
        AuditLog.open(path, LABEL)


def _append_many(path: str, count: int, worker: int) -> None:
    log = AuditLog.open(Path(path), LABEL)
    for index in range(count):
        log.append(UPDATE_SENT, worker=worker, index=index)


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_append_many, args=(str(path), 150, worker)) for worker in (1, 2)
    ]
    for process in processes:
        process.start()
    log = AuditLog.open(path, LABEL)
    threads = [
        threading.Thread(target=lambda n=n: [log.append("note", thread=n) for _ in range(25)])
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    report = verify_audit_log(path)
    assert report.ok, report.problems[:3]
    assert len(report.records) == 1 + 2 * 150 + 4 * 25
    for worker in (1, 2):
        indexes = [r["index"] for r in report.records if r.get("worker") == worker]
        assert indexes == list(range(150))
