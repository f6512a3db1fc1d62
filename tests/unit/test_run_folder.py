"""The run folder is written atomically, as valid JSON, and never overwrites a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from consortia.common.audit.log import verify_audit_log
from consortia.common.errors import ConsortiaError
from consortia.common.files import sha256_file
from consortia.server.run.folder import EVENTS_FILE, RESULTS_FILE, RunFolder, read_record


def test_results_events_and_checkpoints(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run", {"run_name": "run", "task": "segmentation"})
    folder.update_round(1, evaluation={"holdout": {"dice": 0.5, "hd95": float("nan")}})
    folder.event("round_done", round=1, value=float("inf"))
    relative, digest = folder.checkpoint(1, {"w": torch.ones(3)})
    folder.finish("completed")

    results = json.loads((tmp_path / "run" / RESULTS_FILE).read_text())
    assert results["status"] == "completed"
    assert results["started_at"].endswith("Z") and results["finished_at"].endswith("Z")
    assert results["rounds"][0]["evaluation"]["holdout"] == {"dice": 0.5, "hd95": None}
    events = [
        json.loads(line) for line in (tmp_path / "run" / EVENTS_FILE).read_text().splitlines()
    ]
    assert [e["event"] for e in events] == ["log_opened", "round_done", "checkpoint_saved"]
    assert events[1]["round"] == 1 and events[1]["value"] is None  # inf is not JSON
    assert events[2]["sha256"] == digest == sha256_file(tmp_path / "run" / relative)
    assert verify_audit_log(tmp_path / "run" / EVENTS_FILE).ok
    state = torch.load(tmp_path / "run" / relative, weights_only=True)
    assert torch.equal(state["w"], torch.ones(3))
    assert not list((tmp_path / "run").glob(".results.json.*"))  # no temp files left


def test_an_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    RunFolder(tmp_path / "run", {"run_name": "run"})
    with pytest.raises(FileExistsError, match="already holds a run"):
        RunFolder(tmp_path / "run", {"run_name": "run"})


def test_a_reopened_run_records_its_resumption(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run", {"run_name": "run", "task": "segmentation"})
    folder.update_round(0, checkpoint="checkpoints/round-000.pt")
    folder.update_round(1, checkpoint="checkpoints/round-001.pt")
    folder.add_ledger_heads({"north": {"sha256": "ab" * 32, "entries": 2}})
    folder.finish("stopped")
    RunFolder(tmp_path / "done", {"run_name": "done"}).finish("completed")
    with pytest.raises(ConsortiaError, match="the run completed"):
        RunFolder.reopen(tmp_path / "done")
    reopened = RunFolder.reopen(tmp_path / "run")
    assert reopened.drop_rounds_after(0) == [1]
    reopened.resume(8, after_round=0)
    record = read_record(tmp_path / "run")
    assert record.status == "running" and record.finished_at is None
    assert [entry.round for entry in record.rounds] == [0]
    assert [(r.flower_run_id, r.after_round) for r in record.resumed] == [(8, 0)]
    assert record.ledger_heads["north"].entries == 2
