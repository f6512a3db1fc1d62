"""The report's units and applicable settings, and MLflow tracking of a run folder into a
local file store (skipped without the optional `mlflow` extra)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from consortia.common.files import write_json_atomic
from consortia.server.report.data import build_report
from consortia.server.report.page import render_html
from consortia.server.run.folder import RESULTS_FILE
from tests.unit.test_report import write_run_folder

_HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None


def _run(tmp_path: Path, **changes: Any) -> Path:
    """The test report's run folder, with top-level fields of results.json changed."""
    run_dir = tmp_path / "run"
    results = write_run_folder(run_dir)
    results.update(changes)
    write_json_atomic(run_dir / RESULTS_FILE, results)
    return run_dir


def test_distances_are_in_voxels_without_a_plan_and_in_mm_with_one(tmp_path: Path) -> None:
    report = build_report(_run(tmp_path / "a"))
    assert report["units"] == {"dice": "0-1", "iou": "0-1", "hd95": "voxels", "asd": "voxels"}
    planned = {"rounds": 2, "plan": {"target_spacing": [1.0, 1.0, 1.5], "patch_size": [32] * 3}}
    report = build_report(_run(tmp_path / "b", settings=planned))
    assert report["units"]["hd95"] == "mm" and report["units"]["asd"] == "mm"
    html = render_html(report, {}, tmp_path / "b" / "run")
    assert "<th>hd95 (mm)</th>" in html and "<th>dice (0-1)</th>" in html
    classification = build_report(_run(tmp_path / "c", task="classification"))
    assert set(classification["units"].values()) == {"0-1"}


def test_only_the_settings_that_apply_are_shown(tmp_path: Path) -> None:
    strategy = {"name": "fedavg", "proximal_mu": 0.0, "server_learning_rate": 0.01, "tau": 0.001}
    training = {"optimizer": "adam", "momentum": 0.9, "nesterov": True, "flip_axes": []}
    settings = {
        "rounds": 2,
        "strategy": strategy,
        "training": training,
        "secure_aggregation": {"mode": "off", "min_sites": 3, "threshold": 0.66},
        "privacy": {"enabled": False},
    }
    no_dp = {"sample_level": {"enabled": False}, "central": {"enabled": False}, "sites": {}}
    run_dir = _run(tmp_path, settings=settings, privacy=no_dp)
    report = build_report(run_dir)
    shown = report["settings"]
    assert shown["strategy"] == {"name": "fedavg"}
    assert shown["training"] == {"optimizer": "adam"}
    assert shown["secure_aggregation"] == {"mode": "off"}
    html = render_html(report, {}, run_dir)
    assert 'id="privacy"' not in html and "Sample-level DP-SGD at the sites:\n<b>off</b>" in html
    # the settings that do apply stay
    settings["strategy"] = {**strategy, "name": "fedadam"}
    settings["training"] = {**training, "optimizer": "sgd"}
    report = build_report(_run(tmp_path / "adam", settings=settings))
    assert report["settings"]["strategy"]["server_learning_rate"] == 0.01
    assert "proximal_mu" not in report["settings"]["strategy"]
    assert report["settings"]["training"]["momentum"] == 0.9
    # with DP on, the per-site privacy table is there
    assert 'id="privacy"' in render_html(build_report(_run(tmp_path / "dp")), {}, tmp_path)


@pytest.mark.skipif(
    not _HAS_MLFLOW,
    reason="needs the optional 'mlflow' extra (mlflow-skinny, about 60 MB; not in dev)",
)
def test_mlflow_logs_params_metrics_and_the_report_and_a_resume_adds_rounds(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    from consortia.server.report.mlflow_log import RUN_NAME_TAG, log_run

    run_dir = tmp_path / "run"
    results = write_run_folder(run_dir)
    results["settings"]["name"] = "liver"
    results["rounds"] = results["rounds"][:2]  # rounds 0 and 1 so far
    write_json_atomic(run_dir / RESULTS_FILE, results)
    uri = (tmp_path / "mlruns").as_uri()
    run_id = log_run(run_dir, uri)

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "liver"
    assert run.data.tags[RUN_NAME_TAG] == "study-1" and run.info.status == "FINISHED"
    assert run.data.params["strategy.name"] == "fedavg"
    assert run.data.params["config_hash"] == "c" * 64
    history = client.get_metric_history(run_id, "eval/holdout/dice")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 0.05), (1, 0.35)]
    assert client.get_metric_history(run_id, "privacy/north/epsilon")[-1].step == 1
    artifacts = {item.path for item in client.list_artifacts(run_id)}
    assert {"results.json", "report"} <= artifacts
    assert "report/report.html" in {item.path for item in client.list_artifacts(run_id, "report")}

    # the run resumes and ends: the same MLflow run gets round 2 only
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    results["rounds"] = write_run_folder(tmp_path / "full")["rounds"]
    write_json_atomic(run_dir / RESULTS_FILE, results)
    assert log_run(run_dir, uri, report=False) == run_id
    history = client.get_metric_history(run_id, "eval/holdout/dice")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 0.05), (1, 0.35), (2, 0.5)]


def test_tracking_problems_never_fail_a_run(tmp_path: Path) -> None:
    from consortia.server.report.mlflow_log import track_run

    track_run(tmp_path / "no-such-run", "file:///nonexistent")  # a warning, no exception
    track_run(tmp_path / "no-such-run", None)
