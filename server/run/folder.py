"""The run folder: results written as they arrive, events for live progress, checkpoints.

Layout (schema in docs/results-schema.md)::

    runs/<run-name>/
        results.json        # the whole run so far; rewritten atomically after each step
        audit.jsonl         # hash-chained audit log, UTC timestamps (also live progress)
        provenance.json     # signed summary of the run, written at its end
        checkpoints/round-NNN.pt   # global model state_dict after each round
        server.log
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from consortia.common.audit.log import (
    AUDIT_LOG_FILE,
    CHECKPOINT_SAVED,
    AuditLog,
    server_log_label,
)
from consortia.common.errors import ConsortiaError
from consortia.common.files import json_default, sha256_file, write_text_atomic
from consortia.common.logs import utc_now
from consortia.server.run.record import RESULTS_SCHEMA, RoundEntry, RunRecord

if TYPE_CHECKING:
    import torch

__all__ = [
    "EVENTS_FILE",
    "RESULTS_FILE",
    "SALIENCY_DIR",
    "SCHEMA",
    "RunFolder",
    "read_record",
]

RESULTS_FILE: Final = "results.json"
EVENTS_FILE: Final = AUDIT_LOG_FILE
CHECKPOINT_DIR: Final = "checkpoints"
# Saliency maps a held-out site shared: `saliency/<site>/case-NN.png`.
SALIENCY_DIR: Final = "saliency"
SCHEMA: Final = RESULTS_SCHEMA
_STATUS_COMPLETED: Final = "completed"
_STATUS_RUNNING: Final = "running"


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_record(path: Path, *, missing: str = "not found") -> RunRecord:
    """The typed `results.json` of the run folder `path`; errors name the file and the
    field (`missing` says what the file's absence means)."""
    results_path = path / RESULTS_FILE
    try:
        data = json.loads(results_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConsortiaError(f"{results_path}: {missing}") from None
    except (OSError, ValueError) as err:
        raise ConsortiaError(f"{results_path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise ConsortiaError(f"{results_path}: not a {SCHEMA} file")
    return RunRecord.from_json(data, str(results_path))


class RunFolder:
    """Owns `results.json`, the audit log and the checkpoints of one run.

    The record being written is kept as JSON (private); every `save` checks it against
    `RunRecord` before it reaches the disk (a key the schema lacks fails the write), and
    `record` is the typed view readers use."""

    def __init__(
        self, path: Path, header: Mapping[str, Any], *, results: dict[str, Any] | None = None
    ) -> None:
        if results is None and (path / RESULTS_FILE).exists():
            raise FileExistsError(f"run folder {path} already holds a run")
        self.path = path
        (path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        self.audit = AuditLog.open(path / EVENTS_FILE, server_log_label(path.name))
        if results is not None:
            self._results = results
            return
        self._results = {
            "schema": SCHEMA,
            **header,
            "status": _STATUS_RUNNING,
            "started_at": utc_now(),
            "finished_at": None,
            "sites": [],
            "rounds": [],
        }
        self.save()

    @classmethod
    def reopen(cls, path: Path) -> RunFolder:
        """The folder of a run that did not complete (killed, crashed, stopped for want
        of a quorum), to resume it; the audit chain is checked as it is reopened."""
        record = read_record(path, missing="no such run to resume")
        if record.status == _STATUS_COMPLETED:
            raise ConsortiaError(f"{path}: the run completed; there is nothing to resume")
        return cls(path, {}, results=record.to_json())

    @property
    def record(self) -> RunRecord:
        """The run so far, typed."""
        return self._validated()[0]

    def _validated(self) -> tuple[RunRecord, str]:
        text = json.dumps(_finite(self._results), indent=2, allow_nan=False, default=json_default)
        return RunRecord.from_json(text, str(self.path / RESULTS_FILE)), text

    def save(self) -> None:
        """Check the record against the schema and rewrite `results.json` atomically."""
        _, text = self._validated()
        write_text_atomic(self.path / RESULTS_FILE, text)

    def update(self, **fields: Any) -> None:
        """Set top-level fields of the record (`privacy`, `secure_aggregation`,
        `ended_early`, ...) and save."""
        self._results.update(fields)
        self.save()

    def event(self, kind: str, /, **fields: Any) -> None:
        """Append one record to the audit log (fsynced at once; the live progress
        display tails the same file)."""
        self.audit.append(kind, **_finite(fields))

    def update_round(self, round_number: int, **fields: Any) -> None:
        """Set fields of the `rounds[]` entry of model version `round_number` (created
        when new) and save."""
        for entry in self._results["rounds"]:
            if entry["round"] == round_number:
                entry.update(fields)
                break
        else:
            self._results["rounds"].append({"round": round_number, **fields})
            self._results["rounds"].sort(key=lambda item: item["round"])
        self.save()

    def stage(self, **fields: Any) -> None:
        """Set top-level fields of the record without writing; saved with the next write
        (the round's entry follows at once)."""
        self._results.update(fields)

    def add_ledger_heads(self, heads: Mapping[str, Mapping[str, Any]]) -> None:
        """Record the privacy-ledger head each site's reply carried (the last per site
        stays in `ledger_heads`); saved with the next write."""
        self._results.setdefault("ledger_heads", {}).update(heads)

    def resume(self, flower_run_id: int | None, after_round: int) -> None:
        """Mark a reopened run as running again and record the resumption; save."""
        self._results.pop("stopped", None)
        self._results.update(status=_STATUS_RUNNING, finished_at=None)
        self._results.setdefault("resumed", []).append(
            {"at": utc_now(), "flower_run_id": flower_run_id, "after_round": after_round}
        )
        self.save()

    def round_entry(self, round_number: int) -> RoundEntry | None:
        """The typed `rounds[]` entry of model version `round_number`, if recorded."""
        return self.record.round_entry(round_number)

    def drop_rounds_after(self, round_number: int) -> list[int]:
        """Forget the entries of rounds after `round_number` (a resumed run redoes
        them); returns their numbers. Saved with the next write."""
        dropped = [e["round"] for e in self._results["rounds"] if e["round"] > round_number]
        self._results["rounds"] = [e for e in self._results["rounds"] if e["round"] <= round_number]
        return dropped

    def checkpoint(self, round_number: int, state: Mapping[str, torch.Tensor]) -> tuple[str, str]:
        """Save the global model after `round_number`; returns its path in the folder and
        the file's SHA-256 (recorded in the audit log)."""
        import torch  # here: readers of run folders (audits, reports) run without torch

        relative = f"{CHECKPOINT_DIR}/round-{round_number:03d}.pt"
        target = self.path / relative
        tmp = target.with_suffix(".tmp")
        torch.save(dict(state), tmp)
        os.replace(tmp, target)
        digest = sha256_file(target)
        self.event(CHECKPOINT_SAVED, round=round_number, checkpoint=relative, sha256=digest)
        return relative, digest

    def finish(self, status: str, **fields: Any) -> None:
        self._results.update(fields)
        self._results["status"] = status
        self._results["finished_at"] = utc_now()
        self.save()
