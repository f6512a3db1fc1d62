"""`consortia runs list|logs|stop` and `consortia site list` against a real, secured
SuperLink with four connected sites (the shared `four_sites` federation): a run is
stopped mid-study with who and why, stays resumable, and its submission folder is gone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from consortia.server.control import STOP_REQUEST_FILE
from consortia.server.run.folder import EVENTS_FILE, read_record
from consortia.server.run.state import resume_target
from tests.support.builders import NO_DP, run_toml
from tests.support.cli import consortia, output_of
from tests.support.cli_federation import CliFederation

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_runs_are_listed_logged_and_stopped_resumably(four_sites: CliFederation) -> None:
    federation = four_sites
    assert federation.consortium is not None
    control = [
        "--superlink",
        federation.control,
        "--ca",
        str(federation.consortium.ca_certificate),
    ]
    config = run_toml(
        "runs",
        rounds=30,
        min_sites=2,
        connect_timeout_s=60,
        training={"batch_size": 8},
        privacy=NO_DP,
        secure_aggregation={"mode": "off"},
    )
    run_dir = federation.submit("runs", config)
    name = run_dir.name
    # `--no-wait` ended the submission: its working folder is gone
    assert not list((Path.home() / ".consortia" / "submissions").glob(f"{name}-*"))
    # Stopped as soon as round 1 is under way (the untrained model is checkpointed).
    deadline = time.monotonic() + 120
    while '"round_started"' not in (run_dir / EVENTS_FILE).read_text():
        assert time.monotonic() < deadline, "no round started within 120 s"
        time.sleep(0.5)

    listed = consortia("runs", "list", "--runs-dir", federation.runs)
    assert listed.returncode == 0 and name in listed.stdout and "running" in listed.stdout

    sites = consortia("site", "list", "--state-dir", federation.root / "server", *control)
    assert sites.returncode == 0, output_of(sites)
    assert sites.stdout.count("online") >= 4

    logs = consortia("runs", "logs", name, "--runs-dir", federation.runs, *control)
    assert logs.returncode == 0, output_of(logs)

    stop = consortia(
        "runs", "stop", name, "--reason", "e2e check", "--by", "tester",
        "--runs-dir", federation.runs, *control,
    )  # fmt: skip
    text = " ".join(output_of(stop).split())
    assert stop.returncode == 0, text
    record = read_record(run_dir)
    assert record.status == "stopped" and record.stopped is not None
    assert record.stopped.reason == "stopped by tester (e2e check)"
    assert "consortia run --resume" in text
    assert not (run_dir / STOP_REQUEST_FILE).exists()
    assert resume_target(run_dir).last_round >= 0  # resumable from the saved model
