"""End to end through Flower's real runtime: SuperLink + SuperNodes on 127.0.0.1.

`consortia demo` is run as a user runs it (a subprocess of the installed CLI), with tiny
settings; each test then checks the run folder it wrote and that no process survived.
The two demos run at the same time (one module fixture): most of a demo's time is spent
waiting on Flower's polls, not computing.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from consortia.server.report.writer import write_report
from consortia.server.run.folder import EVENTS_FILE
from tests.support.browser import render_page
from tests.support.cli import CLI, consortia
from tests.support.processes import flower_processes, tagged_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Segmentation with 3 training sites (secure aggregation on by default), classification
# with 2 (plain aggregation): both paths through the real runtime, TLS and signatures on.
# This run's demos, told apart from the processes of a test running beside them.
DEMO_TAG = f"demo-{uuid.uuid4().hex}"
DEMOS = {"segmentation": 4, "classification": 3}


@dataclass(frozen=True)
class Demo:
    """One finished `consortia demo`: its output folder, exit status and what it printed."""

    output: Path
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Demos:
    """Both demos, run at the same time, and the Flower processes before and after."""

    runs: dict[str, Demo]
    before: set[str]
    after: set[str]


def _start(task: str, sites: int, output: Path, logs: ExitStack) -> subprocess.Popen[bytes]:
    output.mkdir(parents=True)
    args = ["--rounds", "2", "--sites", str(sites), "--task", task, "--output", str(output)]
    args += ["--image-size", "32", "--cases", "24", "--local-epochs", "1"]
    return subprocess.Popen(
        [*CLI, "demo", *args],
        env=tagged_env(DEMO_TAG),
        stdout=logs.enter_context((output.parent / f"{task}.out").open("wb")),
        stderr=logs.enter_context((output.parent / f"{task}.err").open("wb")),
    )


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demos]:
    """Both demos, started together (each waits on Flower's polls most of the time)."""
    root = tmp_path_factory.mktemp("demos")
    before = flower_processes(DEMO_TAG)
    with ExitStack() as logs:
        started = {task: _start(task, n, root / task, logs) for task, n in DEMOS.items()}
        try:
            codes = {task: demo.wait(timeout=600) for task, demo in started.items()}
        finally:
            for demo in started.values():
                if demo.poll() is None:
                    demo.kill()
    runs = {
        task: Demo(
            root / task,
            codes[task],
            (root / f"{task}.out").read_text(errors="replace"),
            (root / f"{task}.err").read_text(errors="replace"),
        )
        for task in DEMOS
    }
    yield Demos(runs, before, flower_processes(DEMO_TAG))


def _check_events_and_audit(run_dir: Path, roles: set[str], secure: bool) -> None:
    """The event log, the audit trail and the signed provenance of a finished demo."""
    events = [json.loads(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[:2] == ["log_opened", "run_started"] and kinds[-1] == "run_finished"
    assert kinds.count("round_done") == 2
    assert all(event["time"].endswith("Z") for event in events)
    assert kinds.count("update_verified") >= 2 * len(roles)

    # The audit trail and the signed provenance verify against the consortium CA.
    ca = run_dir / "workspace" / "pki" / "server" / "ca.pem"
    verified = consortia("audit", "verify", run_dir, "--ca", ca, "--json")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    provenance = json.loads((run_dir / "provenance.json").read_text())["provenance"]
    assert [r["round"] for r in provenance["rounds"]] == [0, 1, 2]
    assert provenance["secure_aggregation"]["enabled"] == secure


def _check_report(
    run_dir: Path, stdout: str, roles: set[str], interval: tuple[float, float]
) -> None:
    """The report the demo wrote, opened in a browser (and its data, as `--json` has it)."""
    low, high = interval
    assert "report.html" in stdout
    page = render_page(run_dir / "report" / "report.html")
    write_report(run_dir, run_dir / "report", json_copy=True)
    cross = {row[0]: row for row in page.tables["cross-site"][1:]}
    assert set(cross) == {*roles, "held-out sites (pooled)", "training sites (pooled)"}
    assert f"[{low:.3f}, {high:.3f}]" in cross["held-out sites (pooled)"][3]
    assert {row[0] for row in page.tables["participation"][1:]} == {"1", "2"}
    figures = json.loads((run_dir / "report" / "report.json").read_text())["figures"]
    assert {"learning-curves", "epsilon", "participation"} <= set(figures)
    assert len(page.images) == len(figures) and page.colourful_pixels() > 20_000


@pytest.mark.parametrize(("task", "sites"), DEMOS.items())
def test_demo_runs_a_whole_federation(demos: Demos, task: str, sites: int) -> None:
    demo = demos.runs[task]
    tmp_path = demo.output
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "SYNTHETIC" in demo.stdout

    [run_dir] = [p for p in tmp_path.iterdir() if p.name.startswith("demo-")]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["task"] == task
    roles = {site["name"]: site["role"] for site in results["sites"]}
    trainers = [f"hospital-{c}" for c in "abc"[: sites - 1]]
    holdout = f"hospital-{'abcd'[sites - 1]}"
    assert roles == {**dict.fromkeys(trainers, "train"), holdout: "holdout"}
    assert results["security"] == {
        "tls": True,
        "site_authentication": True,
        "signed_updates": True,
    }

    metric = "dice" if task == "segmentation" else "auc"
    rounds = {entry["round"]: entry for entry in results["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    for number in (1, 2):
        assert rounds[number]["participants"] == trainers
        assert rounds[number]["total_examples"] == 24 * len(trainers)
        secure = rounds[number]["secure_aggregation"]
        assert (secure is not None) == (len(trainers) >= 3)
        if secure is not None:
            assert secure["status"] == "ok" and secure["dropped"] == 0
        assert (run_dir / rounds[number]["checkpoint"]).is_file()
    for number in (0, 1, 2):
        evaluation = rounds[number]["evaluation"]
        assert set(evaluation["sites"]) == set(roles)
        assert evaluation["holdout"][metric] is not None or task == "segmentation"
        assert evaluation["holdout"]["cases"] > 0
    if task == "segmentation":
        # surface distances only on the final model (surface_metrics = "final")
        assert rounds[2]["evaluation"]["holdout"]["hd95"] is not None
        assert rounds[1]["evaluation"]["holdout"]["hd95"] is None
    # the held-out site never trained
    assert all(holdout not in entry.get("train", {}) for entry in results["rounds"])
    # 95% bootstrap intervals for the final model, per site and pooled
    final = rounds[2]["evaluation"]
    intervals = final["intervals"]
    assert intervals["level"] == 0.95 and set(intervals["sites"]) == set(roles)
    low, high = intervals["holdout"][metric]
    assert low <= final["holdout"][metric] <= high
    assert "intervals" not in rounds[1]["evaluation"]

    # the held-out site drew saliency maps of the final model and kept them (not shared)
    site_state = run_dir / "workspace" / "sites" / holdout / "node" / "saliency" / run_dir.name
    assert len(list(site_state.glob("case-*.png"))) == 4
    assert not (run_dir / "saliency").exists()

    _check_events_and_audit(run_dir, set(roles), len(trainers) >= 3)
    assert demos.after <= demos.before, "demo left Flower processes running"
    # last: it is skipped where no browser is installed
    _check_report(run_dir, demo.stdout, set(roles), (low, high))
