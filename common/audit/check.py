"""Reading and checking audit logs (the format `consortia.common.audit.log` writes).

An audit log is a JSON-lines file, one record per line::

    {"seq": 0, "time": "...Z", "event": "log_opened", "label": "node:site-a",
     "prev_hash": "<genesis_for(label)>", "hash": "..."}
    {"seq": 1, "time": "...Z", "event": "run_approved", ..., "prev_hash": "<hash of seq 0>",
     "hash": "..."}

`hash` is `consortia.common.crypto.hash_chain.chain_hash` of the record (its canonical JSON
without `hash`), `prev_hash` the previous record's `hash`, and the first record's
`prev_hash` is `genesis_for(label)` of the label it carries. `seq` counts from 0 with no
gaps. This module checks all of that and names the line of every problem.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from consortia.common.crypto.hash_chain import HASH_FIELD, PREV_FIELD, chain_hash, genesis_for
from consortia.common.errors import ConsortiaError

try:  # POSIX: a reader waits for a writer to finish its line
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOG_OPENED",
    "RESERVED_FIELDS",
    "TORN_TAIL_SET_ASIDE",
    "AuditLogError",
    "AuditReport",
    "ChainChecker",
    "audit_hashes",
    "parse_line",
    "read_audit_log",
    "shared_lock",
    "short",
    "utc_time_problem",
    "verify_audit_log",
]

LOG_OPENED = "log_opened"
TORN_TAIL_SET_ASIDE = "torn_tail_set_aside"
RESERVED_FIELDS = frozenset({"seq", "time", "event", PREV_FIELD, HASH_FIELD})
_UTC_SUFFIXES = ("Z", "+00:00")


class AuditLogError(ConsortiaError):
    """An audit log cannot be read, or is broken and must not be appended to."""


@dataclass
class AuditReport:
    """What `verify_audit_log` found: `problems` (each names a line) is empty when the log
    is intact; `notes` are facts worth showing that are not problems (a torn tail that
    the writer set aside, for instance). `head` is the last record's hash."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    head: str | None = None
    label: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the records themselves)."""
        return {
            "path": str(self.path),
            "ok": self.ok,
            "label": self.label,
            "records": len(self.records),
            "head": self.head,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def short(digest: object) -> str:
    """The first 12 characters of a hash, for messages."""
    return f"{str(digest)[:12]}…"


def utc_time_problem(value: object) -> str | None:
    """Why `value` is not an ISO-8601 UTC timestamp ending in Z or +00:00 (None if it is)."""
    if not isinstance(value, str):
        return "time is missing or not a string"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return f"time {value!r} is not an ISO-8601 timestamp"
    if not value.endswith(_UTC_SUFFIXES) or parsed.utcoffset() != timedelta(0):
        return f"time {value!r} is not UTC (must end in Z or +00:00)"
    return None


def parse_line(raw: bytes) -> dict[str, Any] | str:
    """One line (without its newline) as a record, or why it is not one."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(value, dict):
        return f"not a JSON object but {type(value).__name__}"
    return value


class ChainChecker:
    """Checks records one at a time, in file order, remembering the chain so far.

    Used by the verifier (which collects every problem) and by the writer (which
    refuses to append after the first one)."""

    def __init__(self, expected_label: str | None = None) -> None:
        self.expected_label = expected_label
        self.label: str | None = None
        self.head: str | None = None
        self.seq: int | None = None
        self.count = 0
        self._lines_by_hash: dict[str, int] = {}

    def feed(self, line: int, record: Mapping[str, Any]) -> list[str]:
        """Problems of the record on `line` (1-based), given the records before it."""
        seq = record.get("seq")
        what = f"line {line}"
        if type(seq) is int:
            what += f" (seq {seq}, {record.get('event', '?')})"
        problems = self._link(line, what, record) if self.count else self._start(what, record)
        if record.get(HASH_FIELD) != chain_hash(record):
            problems.append(f"{what}: content does not match its hash (record edited)")
        if not isinstance(record.get("event"), str):
            problems.append(f"{what}: no event name")
        time_problem = utc_time_problem(record.get("time"))
        if time_problem:
            problems.append(f"{what}: {time_problem}")
        if type(seq) is not int:
            problems.append(f"{what}: seq is missing or not an integer")
        self.count += 1
        self.seq = seq if type(seq) is int else None
        digest = record.get(HASH_FIELD)
        self.head = digest if isinstance(digest, str) else None
        if self.head is not None:
            self._lines_by_hash.setdefault(self.head, line)
        return problems

    def _start(self, what: str, record: Mapping[str, Any]) -> list[str]:
        problems = []
        label = record.get("label")
        if record.get("event") != LOG_OPENED or not isinstance(label, str):
            problems.append(
                f"{what}: the first record is not the log's '{LOG_OPENED}' record with its "
                "label (the start of the log was removed or replaced)"
            )
            label = self.expected_label
        elif record.get("seq") != 0:
            problems.append(f"{what}: the '{LOG_OPENED}' record must have seq 0")
        if self.expected_label is not None and label != self.expected_label:
            problems.append(
                f"{what}: the log is labelled {label!r}, expected {self.expected_label!r} "
                "(a log of another run or node?)"
            )
        if label is not None and record.get(PREV_FIELD) != genesis_for(label):
            problems.append(
                f"{what}: prev_hash is not the chain start of label {label!r} "
                "(the first record was changed or removed)"
            )
        self.label = label
        return problems

    def _link(self, line: int, what: str, record: Mapping[str, Any]) -> list[str]:
        problems = []
        prev = record.get(PREV_FIELD)
        if prev != self.head:
            earlier = self._lines_by_hash.get(prev) if isinstance(prev, str) else None
            if earlier is not None:
                problems.append(
                    f"{what}: prev_hash is the hash of line {earlier}, not of line {line - 1}: "
                    f"line(s) {earlier + 1}..{line - 1} were inserted or moved here"
                )
            else:
                problems.append(
                    f"{what}: prev_hash does not match line {line - 1}'s hash (the record "
                    "before it was removed, or this record was moved or forged)"
                )
        seq = record.get("seq")
        if type(seq) is int and self.seq is not None and seq != self.seq + 1:
            if seq > self.seq + 1:
                missing = seq - self.seq - 1
                problems.append(
                    f"{what}: seq {seq} follows seq {self.seq}: {missing} record(s) missing "
                    "(deleted)"
                )
            else:
                problems.append(
                    f"{what}: seq {seq} does not follow seq {self.seq} (record inserted or "
                    "records reordered)"
                )
        if record.get("event") == LOG_OPENED:
            problems.append(f"{what}: a second '{LOG_OPENED}' record (another log spliced in?)")
        return problems


@contextlib.contextmanager
def shared_lock(path: Path) -> Iterator[int]:
    """Open `path` read-only under a shared lock (writers hold an exclusive one while they
    append), so a reader never sees a line that is still being written."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise AuditLogError(f"{path}: cannot read the audit log ({err.strerror})") from None
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):  # file systems without locks: read anyway
                fcntl.flock(fd, fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise AuditLogError(f"{path}: is a folder, not an audit log file")
    with shared_lock(path) as fd, os.fdopen(os.dup(fd), "rb") as handle:
        return handle.read()


def audit_hashes(path: Path) -> set[str]:
    """The hashes of every readable record of an audit log (e.g. to check that a head
    stored elsewhere, such as in a run's checkpoint, is still in the log)."""
    return {str(r[HASH_FIELD]) for r in verify_audit_log(path).records if HASH_FIELD in r}


def verify_audit_log(
    path: Path,
    *,
    expected_head: str | None = None,
    expected_label: str | None = None,
    expected_hashes: Mapping[str, str] | None = None,
) -> AuditReport:
    """Check every line of an audit log; raise `AuditLogError` only if it cannot be read.

    `expected_head`: the hash the log must end with (e.g. from a signed provenance): a
    log that ends earlier lost its tail, one that goes on has records added after it.
    `expected_label`: the label the log must carry. `expected_hashes`: hash -> where it
    was recorded (e.g. a node's head as reported to a run's server); each must appear in
    the log, which may go on after it."""
    data = _read_bytes(path)
    report = AuditReport(path=path)
    checker = ChainChecker(expected_label)
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if tail:
        lines.append(tail)
    _check_lines(report, checker, lines, torn=bool(tail))
    if not lines:
        report.problems.append(f"line 1: the log is empty (no '{LOG_OPENED}' record)")
    report.head, report.label = checker.head, checker.label
    _check_expected(report, len(lines), expected_head, expected_hashes or {})
    return report


def _check_lines(
    report: AuditReport, checker: ChainChecker, lines: list[bytes], *, torn: bool
) -> None:
    """Parse and chain-check each line into `report` (`torn`: the last line has no newline)."""
    for number, raw in enumerate(lines, start=1):
        last = number == len(lines)
        if last and torn:
            report.problems.append(
                f"line {number}: incomplete last line without a newline (a torn write: the "
                "writer stopped mid-line; the next AuditLog.open sets it aside)"
            )
            continue
        parsed = parse_line(raw)
        if isinstance(parsed, str):
            suffix = " (a torn last line?)" if last else ""
            report.problems.append(f"line {number}: {parsed}{suffix}")
            continue
        report.problems.extend(checker.feed(number, parsed))
        report.records.append(parsed)
        if parsed.get("event") == TORN_TAIL_SET_ASIDE:
            report.notes.append(
                f"line {number}: the writer set aside a torn tail of {parsed.get('bytes')} "
                f"byte(s) into {parsed.get('file')} at {parsed.get('time')}"
            )


def _check_expected(
    report: AuditReport,
    line_count: int,
    expected_head: str | None,
    expected_hashes: Mapping[str, str],
) -> None:
    """Add to `report` the problems of a log that does not end at `expected_head` or lacks
    one of `expected_hashes`."""
    hashes = {str(r.get(HASH_FIELD)): i for i, r in enumerate(report.records)}
    if expected_head is not None and expected_head != report.head:
        index = hashes.get(expected_head)
        if index is None:
            report.problems.append(
                f"line {line_count} (end of the log): the log ends at {short(report.head)}, "
                f"not at the expected head {short(expected_head)}: its last records were "
                "removed (truncated tail) or the log was replaced"
            )
        else:
            extra = len(report.records) - index - 1
            report.problems.append(
                f"{extra} record(s) after the expected head {short(expected_head)} (seq "
                f"{report.records[index].get('seq')}): added after the head was recorded"
            )
    for digest, source in expected_hashes.items():
        if digest not in hashes:
            report.problems.append(
                f"the hash {short(digest)} recorded in {source} is not in the log: records "
                "up to it were removed (truncated tail) or altered"
            )


def read_audit_log(path: Path, *, verify: bool = True) -> list[dict[str, Any]]:
    """The records of an audit log. With `verify` (the default) a log with any problem
    raises `AuditLogError` naming the file and the first problem."""
    report = verify_audit_log(path)
    if verify and report.problems:
        raise AuditLogError(f"{path}: {report.problems[0]}")
    return report.records
