"""End to end through Flower's real runtime: SuperLink + SuperNodes on 127.0.0.1.

`consortia demo` is run as a user runs it (a subprocess of the installed CLI), with tiny
settings; the test then checks the run folder it wrote and that no process survived.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import flower_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLI = [sys.executable, "-m", "consortia.common.cli"]


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_demo_runs_a_whole_federation(tmp_path: Path, task: str) -> None:
    before = flower_processes()
    result = subprocess.run(
        [
            *CLI,
            "demo",
            "--rounds",
            "2",
            "--sites",
            "3",
            "--task",
            task,
            "--output",
            str(tmp_path),
            "--image-size",
            "32",
            "--cases",
            "24",
            "--local-epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SYNTHETIC" in result.stdout

    [run_dir] = [p for p in tmp_path.iterdir() if p.name.startswith("demo-")]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["task"] == task
    roles = {site["name"]: site["role"] for site in results["sites"]}
    assert roles == {"hospital-a": "train", "hospital-b": "train", "hospital-c": "holdout"}

    metric = "dice" if task == "segmentation" else "auc"
    rounds = {entry["round"]: entry for entry in results["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    for number in (1, 2):
        assert rounds[number]["participants"] == ["hospital-a", "hospital-b"]
        assert rounds[number]["total_examples"] == 48
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
    assert all("hospital-c" not in entry.get("train", {}) for entry in results["rounds"])

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_done"
    assert kinds.count("round_done") == 2
    assert all(event["time"].endswith("Z") for event in events)

    assert flower_processes() <= before, "demo left Flower processes running"
