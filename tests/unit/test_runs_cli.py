"""`consortia runs list|follow|stop|logs` on real run folders (the SuperLink side is in
tests/e2e/test_runs.py), the stop reason's way from the request to results.json, and
`consortia site list` on a wrong state folder."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

from consortia.common.audit.log import RUN_FINISHED, RUN_RESUMED, RUN_STARTED
from consortia.common.cli import main
from consortia.common.config.settings import RunSettings
from consortia.common.wire.run_identity import RunIdentity
from consortia.server.control import STOP_REQUEST_FILE, UNREQUESTED_STOP_REASON, take_stop_reason
from consortia.server.run.folder import EVENTS_FILE, RunFolder, read_record
from consortia.server.run.server_app import _record_stop
from tests.support.cli import CLI
from tests.unit.test_report import write_run_folder


def consortia(*args: str | Path) -> tuple[int, str]:
    """`consortia ARGS` as the console script runs it (its error handling and exit code
    included), in this process, on a wide console: (exit code, its output, one line)."""
    stream = io.StringIO()
    with (
        mock.patch.object(sys, "argv", ["consortia", *map(str, args)]),
        mock.patch.dict("os.environ", {"COLUMNS": "250"}),
        contextlib.redirect_stdout(stream),
        contextlib.redirect_stderr(stream),
        pytest.raises(SystemExit) as exit_info,
    ):
        main()
        raise SystemExit(0)
    return int(exit_info.value.code or 0), " ".join(stream.getvalue().split())


_SETTINGS = RunSettings()


def _stop(folder: RunFolder, reason: str | None = None) -> None:
    """What the ServerApp does when Flower ends it for a stop (`reason`: a stop request)."""
    if reason is not None:
        (folder.path / STOP_REQUEST_FILE).write_text(json.dumps({"reason": reason}))
    _record_stop(folder, _SETTINGS, RunIdentity.of(_SETTINGS), None)


def _running(runs: Path, name: str, rounds: int = 3) -> RunFolder:
    folder = RunFolder(
        runs / name,
        {"run_name": name, "flower_run_id": 41, "task": "segmentation",
         "settings": {"rounds": rounds}},
    )  # fmt: skip
    folder.event(RUN_STARTED, run_name=name, rounds=rounds)
    return folder


def test_a_requested_stop_is_recorded_with_who_and_why_and_stays_resumable(
    tmp_path: Path,
) -> None:
    folder = _running(tmp_path, "study-20261207-100000")
    _stop(folder, "stopped by alice (wrong plan)")
    record = read_record(folder.path)
    assert record.status == "stopped" and record.finished_at is not None
    assert record.stopped is not None and record.stopped.reason == "stopped by alice (wrong plan)"
    assert record.stopped.round == 1
    assert not (folder.path / STOP_REQUEST_FILE).exists()  # taken: a resumed run starts clean
    assert take_stop_reason(folder.path) == UNREQUESTED_STOP_REASON
    events = (folder.path / EVENTS_FILE).read_text()
    assert '"run_stopped"' in events and '"status":"stopped"' in events.replace(" ", "")
    # resumable: reopening (what `consortia run --resume` does) accepts it
    assert RunFolder.reopen(folder.path).record.status == "stopped"
    assert (folder.path / "provenance.json").is_file()  # signed record of the stop
    _stop(folder, "a second stop")  # an ended run: nothing changes
    assert read_record(folder.path).stopped == record.stopped


def test_runs_list_shows_every_run_with_its_status_and_why_it_ended(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run_folder(runs / "study-1")
    _running(runs, "live-20261207-110000")
    stopped = _running(runs, "halted-20261207-120000")
    _stop(stopped, "stopped by bob (site down)")
    (runs / "not-a-run").mkdir()
    code, text = consortia("runs", "list", "--runs-dir", runs)
    assert code == 0, text
    for expected in ("study-1", "completed", "2/2", "live-20261207", "running", "0/3"):
        assert expected in text
    assert "halted-20261207" in text and "stopped by bob" in text
    assert "not-a-run" not in text


def test_unknown_runs_and_folders_are_clear_errors(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run_folder(runs / "study-1")
    for args in (
        ("follow", "nope"),
        ("stop", "nope", "--insecure"),
        ("logs", "nope", "--insecure"),
    ):
        code, text = consortia("runs", *args, "--runs-dir", runs)
        assert code == 2 and "no run 'nope' in" in text and "runs list" in text
    code, text = consortia("runs", "follow", "../study-1", "--runs-dir", runs)
    assert code == 2 and "not a run name" in text
    code, text = consortia("runs", "list", "--runs-dir", tmp_path / "missing")
    assert code == 2 and "no runs folder here" in text
    code, text = consortia("runs", "stop", "study-1", "--runs-dir", runs, "--insecure")
    assert code == 2 and "is not running (status completed)" in text


def test_follow_prints_how_an_ended_run_ended(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    folder = _running(runs, "study-20261207-130000")
    _stop(folder, "stopped by the coordinator (Ctrl-C)")
    code, text = consortia("runs", "follow", folder.path.name, "--runs-dir", runs)
    assert code == 0, text
    assert "stopped: stopped by the coordinator (Ctrl-C)" in text
    assert "consortia run --resume" in text


def test_follow_reattaches_to_a_live_run_past_its_earlier_end(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    folder = _running(runs, "study-20261207-140000", rounds=2)
    # the run was stopped once and resumed: the earlier end must not end the follow
    folder.event(RUN_FINISHED, status="stopped", reason="stopped by bob (test)")
    folder.event(RUN_RESUMED, from_round=1)
    follower = subprocess.Popen(
        [*CLI, "runs", "follow", folder.path.name, "--runs-dir", str(runs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def finish() -> None:
        time.sleep(3.0)
        folder.event("round_started", round=2)
        folder.event(RUN_FINISHED, status="completed")
        folder.finish("completed")

    writer = threading.Thread(target=finish)
    writer.start()
    started = time.monotonic()
    output, _ = follower.communicate(timeout=90)
    writer.join()
    assert follower.returncode == 0, output
    assert time.monotonic() - started >= 3.0  # it waited for the live end
    assert f"Run {folder.path.name}: completed." in " ".join(output.split())


def test_site_list_fails_on_a_missing_state_dir(tmp_path: Path) -> None:
    code, text = consortia("site", "list", "--state-dir", tmp_path / "nowhere")
    assert code == 1 and "not a server state folder" in text
    state = tmp_path / "server"
    (state / "sites").mkdir(parents=True)
    # a state folder, but no SuperLink answers: the table still comes, online unknown
    code, text = consortia(
        "site", "list", "--state-dir", state, "--superlink", "127.0.0.1:9", "--insecure"
    )
    assert code == 0, text
    assert "Online status unknown" in text and "last seen" in text
