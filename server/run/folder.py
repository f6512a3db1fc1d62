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
from typing import TYPE_CHECKING, Any

import numpy as np

from consortia.common.audit.log import (
    AUDIT_LOG_FILE,
    CHECKPOINT_SAVED,
    AuditLog,
    server_log_label,
)
from consortia.common.errors import ConsortiaError
from consortia.common.files import sha256_file, write_json_atomic
from consortia.common.logs import utc_now

if TYPE_CHECKING:
    import torch

__all__ = ["EVENTS_FILE", "RESULTS_FILE", "SCHEMA", "RunFolder", "read_results"]

RESULTS_FILE = "results.json"
EVENTS_FILE = AUDIT_LOG_FILE
CHECKPOINT_DIR = "checkpoints"
SCHEMA = "consortia.results/1"


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_results(path: Path, *, missing: str = "not found") -> dict[str, Any]:
    """The `results.json` of the run folder `path`, checked to be one; errors name the
    file (`missing` says what its absence means)."""
    results_path = path / RESULTS_FILE
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConsortiaError(f"{results_path}: {missing}") from None
    except (OSError, ValueError) as err:
        raise ConsortiaError(f"{results_path}: unreadable ({err})") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise ConsortiaError(f"{results_path}: not a {SCHEMA} file")
    return results


class RunFolder:
    """Owns `results.json`, the audit log and the checkpoints of one run."""

    def __init__(
        self, path: Path, header: Mapping[str, Any], *, results: dict[str, Any] | None = None
    ) -> None:
        if results is None and (path / RESULTS_FILE).exists():
            raise FileExistsError(f"run folder {path} already holds a run")
        self.path = path
        (path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        self.audit = AuditLog.open(path / EVENTS_FILE, server_log_label(path.name))
        if results is not None:
            self.results = results
            return
        self.results = {
            "schema": SCHEMA,
            **header,
            "status": "running",
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
        results = read_results(path, missing="no such run to resume")
        if results.get("status") == "completed":
            raise ConsortiaError(f"{path}: the run completed; there is nothing to resume")
        return cls(path, {}, results=results)

    def save(self) -> None:
        write_json_atomic(self.path / RESULTS_FILE, _finite(self.results))

    def event(self, kind: str, /, **fields: Any) -> None:
        """Append one record to the audit log (fsynced at once; the live progress
        display tails the same file)."""
        self.audit.append(kind, **_finite(fields))

    def update_round(self, round_number: int, **fields: Any) -> None:
        for entry in self.results["rounds"]:
            if entry["round"] == round_number:
                entry.update(fields)
                break
        else:
            self.results["rounds"].append({"round": round_number, **fields})
            self.results["rounds"].sort(key=lambda item: item["round"])
        self.save()

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
        self.results.update(fields)
        self.results["status"] = status
        self.results["finished_at"] = utc_now()
        self.save()
