"""Append-only, hash-chained audit logs in JSON lines, timestamps in UTC.

The server keeps one per run (`<run folder>/audit.jsonl`, label `server-run:<run id>`),
every node one across runs (`<state dir>/audit.jsonl`, label `node:<site name>`). The
record format and its checks are in `consortia.common.audit.check`; docs/auditing.md
explains both to auditors.

Every `append` reads what other writers added since (under an exclusive `flock` on the
file), checks that it continues the chain, writes one line, and fsyncs it before
returning: a record that `append` returned survives a crash, and nothing is ever
appended to a broken chain (`AuditLogError` instead).

A torn last line (a crash in the middle of a write: no final newline, or an invalid last
line) is never repaired silently. By default `AuditLog.open` (and `append`, if another
writer left one) moves the torn bytes into `<file>.torn-<UTC time>` beside the log,
truncates the log to its last whole record, logs a warning and records the fact in the
chain itself (`torn_tail_set_aside`: file, line, bytes, sha256). With
`set_aside_torn_tail=False` it raises instead, naming the file and the line. Only the last
line can be torn; a bad line anywhere else means the log was altered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from consortia.common.audit.check import (
    LOG_OPENED,
    RESERVED_FIELDS,
    TORN_TAIL_SET_ASIDE,
    AuditLogError,
    AuditReport,
    ChainChecker,
    parse_line,
    read_audit_log,
    verify_audit_log,
)
from consortia.common.crypto.hash_chain import HASH_FIELD, PREV_FIELD, chain_hash, genesis_for
from consortia.common.files import json_default, write_atomic
from consortia.common.logs import utc_now

try:  # POSIX: several processes may append to one log
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per log
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "AGGREGATED",
    "AUDIT_LOG_FILE",
    "CHECKPOINT_SAVED",
    "EVALUATION_SENT",
    "GLOBAL_MODEL",
    "LOG_OPENED",
    "NODE_STARTED",
    "PRIVACY_SPENT",
    "PROVENANCE_COUNTERSIGNED",
    "ROUND_STARTED",
    "RUN_APPROVED",
    "RUN_FAILED",
    "RUN_FINISHED",
    "RUN_REFUSED",
    "RUN_RESUMED",
    "RUN_STARTED",
    "RUN_STOPPED",
    "SITE_JOINED",
    "SITE_LEFT_OUT",
    "SITE_REFUSED",
    "SITE_REJOINED",
    "TORN_TAIL_SET_ASIDE",
    "UPDATE_RECEIVED",
    "UPDATE_REJECTED",
    "UPDATE_SENT",
    "UPDATE_VERIFIED",
    "AuditLog",
    "AuditLogError",
    "AuditReport",
    "node_log_label",
    "read_audit_log",
    "server_log_label",
    "verify_audit_log",
]

logger = logging.getLogger("consortia.common.audit.log")

AUDIT_LOG_FILE = "audit.jsonl"

# Server side (one log per run).
RUN_STARTED = "run_started"  # run_id, run_name, config_hash, app_hash
RUN_RESUMED = "run_resumed"  # from_round, checkpoint_head (the head stored in the checkpoint)
SITE_JOINED = "site_joined"  # site, role, dataset_fingerprint
SITE_REFUSED = "site_refused"  # site, reason (not registered, policy, version ...)
SITE_REJOINED = "site_rejoined"  # site, node_id (a site back after a restart or outage)
ROUND_STARTED = "round_started"  # round, sites
UPDATE_RECEIVED = "update_received"  # round, site, sha256 (of the update as received)
UPDATE_VERIFIED = "update_verified"  # round, site (signature checked)
UPDATE_REJECTED = "update_rejected"  # round, site, reason
SITE_LEFT_OUT = "site_left_out"  # round, site, reason (timeout, error reply)
AGGREGATED = "aggregated"  # round, participants, total_examples, secure_aggregation
GLOBAL_MODEL = "global_model"  # round, sha256 (of the checkpoint file), checkpoint
CHECKPOINT_SAVED = "checkpoint_saved"  # round, checkpoint, sha256
PRIVACY_SPENT = "privacy_spent"  # round, site, epsilon, delta, ... (both sides)
RUN_FINISHED = "run_finished"  # status, rounds
RUN_FAILED = "run_failed"  # error
RUN_STOPPED = "run_stopped"  # round, reason (quorum lost; resumable)
# Node side (one log per node, across runs).
NODE_STARTED = "node_started"  # version, app_hash
RUN_APPROVED = "run_approved"  # run_id, config_hash, app_hash
RUN_REFUSED = "run_refused"  # run_id, reason
UPDATE_SENT = "update_sent"  # run_id, round, sha256, num_examples
EVALUATION_SENT = "evaluation_sent"  # run_id, round, metric names (sums and counts only)
PROVENANCE_COUNTERSIGNED = "provenance_countersigned"  # run_id, provenance_sha256

_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def server_log_label(run_id: str) -> str:
    """The label of a run's server-side audit log."""
    return f"server-run:{run_id}"


def node_log_label(site: str) -> str:
    """The label of a node's audit log."""
    return f"node:{site}"


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays as Python values, NaN/inf as null."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # platforms without directory handles
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AuditLog:
    """One audit log file; create or reopen it with `AuditLog.open(path, label)`.

    Thread-safe, and safe for several processes appending to the same file. `head` and
    `seq` are those of the last record this object wrote or read."""

    def __init__(self, path: Path, label: str, *, set_aside_torn_tail: bool = True) -> None:
        if not label:
            raise ValueError("an audit log needs a non-empty label")
        self._path = path
        self._label = label
        self._set_aside = set_aside_torn_tail
        self._checker = ChainChecker(expected_label=label)
        self._offset = 0  # bytes of the file checked so far
        self._broken: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, label: str, *, set_aside_torn_tail: bool = True) -> AuditLog:
        """Create the log (first record `log_opened` with `label`) or reopen it, after
        checking the whole existing chain, which must carry the same label."""
        log = cls(path, label, set_aside_torn_tail=set_aside_torn_tail)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise AuditLogError(f"{path}: cannot create its folder ({err.strerror})") from None
        created = not path.exists()
        with log._lock, log._exclusive() as fd:
            log._sync(fd)
            if log._checker.count == 0:
                log._write(fd, LOG_OPENED, {"label": label})
        if created:
            _fsync_folder(path.parent)
        return log

    @property
    def path(self) -> Path:
        return self._path

    @property
    def label(self) -> str:
        return self._label

    @property
    def head(self) -> str:
        """Hash of the last record (store it to detect a truncated tail later)."""
        return str(self._checker.head)

    @property
    def seq(self) -> int:
        """`seq` of the last record (the number of records minus one)."""
        return int(self._checker.seq or 0)

    def append(self, event: str, /, **fields: Any) -> dict[str, Any]:
        """Write one record, fsync it, and return it. Values must be JSON (numpy scalars
        and arrays are converted, NaN/inf stored as null)."""
        if not isinstance(event, str) or not _EVENT_NAME.match(event):
            raise ValueError(f"event name {event!r}: use lower-case letters, digits and _")
        if event == LOG_OPENED:
            raise ValueError(f"'{LOG_OPENED}' is written by AuditLog.open only")
        reserved = sorted(RESERVED_FIELDS & fields.keys())
        if reserved:
            raise ValueError(f"reserved field name(s) {reserved} in an audit record")
        clean = json.loads(json.dumps(_jsonable(fields), allow_nan=False, default=json_default))
        with self._lock, self._exclusive() as fd:
            self._sync(fd)
            return self._write(fd, event, clean)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[int]:
        if self._broken is not None:
            raise AuditLogError(self._broken)
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise AuditLogError(
                f"{self._path}: cannot open the audit log ({err.strerror})"
            ) from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def _fail(self, message: str) -> AuditLogError:
        self._broken = f"{self._path}: {message}"
        return AuditLogError(self._broken)

    def _sync(self, fd: int) -> None:
        """Check what was added to the file since this object last looked."""
        size = os.fstat(fd).st_size
        if size < self._offset:
            raise self._fail(
                f"the log shrank from {self._offset} to {size} bytes while in use (truncated "
                "by someone else?); not appending to it"
            )
        if size == self._offset:
            return
        data = os.pread(fd, size - self._offset, self._offset)
        *lines, tail = data.split(b"\n")
        for index, raw in enumerate(lines):
            number = self._checker.count + 1
            parsed = parse_line(raw)
            if isinstance(parsed, str):
                if index == len(lines) - 1 and not tail:
                    self._torn(fd, raw + b"\n", number, parsed)
                    return
                raise self._fail(f"line {number}: {parsed}; the log is broken, not appending")
            problems = self._checker.feed(number, parsed)
            if problems:
                raise self._fail(
                    f"{problems[0]}; not appending to this log (`consortia audit verify "
                    f"{self._path}` lists every problem)"
                )
            self._offset += len(raw) + 1
        if tail:
            self._torn(fd, tail, self._checker.count + 1, "incomplete, no final newline")

    def _torn(self, fd: int, torn: bytes, number: int, why: str) -> None:
        """Set the torn last line aside (or refuse), see the module docstring."""
        message = f"line {number} is torn ({why}): a write was cut short by a crash"
        if not self._set_aside:
            raise self._fail(
                f"{message}. AuditLog.open(path, label) with set_aside_torn_tail=True (the "
                "default; restarting the node or server does it) moves it into "
                f"{self._path.name}.torn-<UTC time> and records that in the log"
            )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self._path.with_name(f"{self._path.name}.torn-{stamp}")

        def _write_torn(handle: IO[bytes]) -> None:
            handle.write(torn)

        write_atomic(aside, _write_torn)
        os.ftruncate(fd, self._offset)
        os.fsync(fd)
        logger.warning("%s: %s; set aside into %s", self._path, message, aside.name)
        if self._checker.count == 0:
            self._write(fd, LOG_OPENED, {"label": self._label})
        self._write(
            fd,
            TORN_TAIL_SET_ASIDE,
            {
                "file": aside.name,
                "line": number,
                "bytes": len(torn),
                "sha256": hashlib.sha256(torn).hexdigest(),
            },
        )

    def _write(self, fd: int, event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        first = self._checker.count == 0
        record: dict[str, Any] = {
            "seq": 0 if first else int(self._checker.seq or 0) + 1,
            "time": utc_now(),
            "event": event,
            **fields,
            PREV_FIELD: genesis_for(self._label) if first else self._checker.head,
        }
        record[HASH_FIELD] = chain_hash(record)
        data = (json.dumps(record, allow_nan=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        problems = self._checker.feed(self._checker.count + 1, record)
        if problems:  # pragma: no cover - would be a bug in this module
            raise self._fail(f"wrote an invalid record: {problems[0]}")
        self._offset += len(data)
        return record
