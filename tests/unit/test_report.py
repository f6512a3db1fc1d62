"""`consortia report`: the report's data, figures, HTML (rendered in headless Chromium)
and JSON, from a run folder written as the server writes one (real runs are reported in
tests/e2e/test_demo.py and tests/e2e/test_cli.py)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from consortia.common.cli import main
from consortia.common.files import write_json_atomic
from consortia.server.report.data import ReportError, build_report
from consortia.server.report.writer import REPORT_HTML, REPORT_JSON, write_report
from consortia.server.run.folder import RESULTS_FILE, SCHEMA
from tests.support.browser import render_page

_INTERVAL = [0.41, 0.58]


def _evaluation(scale: float, final: bool) -> dict[str, Any]:
    def metrics(dice: float, cases: int) -> dict[str, Any]:
        return {"dice": dice, "iou": dice * 0.8, "hd95": None, "asd": None, "cases": cases}

    entry: dict[str, Any] = {
        "sites": {
            "north": metrics(0.6 * scale, 10),
            "south": metrics(0.4 * scale, 10),
            "east": metrics(0.5 * scale, 40),
        },
        "holdout": metrics(0.5 * scale, 40),
        "training_sites": metrics(0.5 * scale, 20),
    }
    if final:
        entry["intervals"] = {
            "level": 0.95,
            "replicates": 1000,
            "method": "percentile bootstrap of cases, resampled at each site (stratified)",
            "sites": {"north": {"dice": [0.5, 0.7], "iou": None}, "east": {"dice": _INTERVAL}},
            "holdout": {"dice": _INTERVAL, "iou": [0.3, 0.45]},
            "training_sites": {"dice": [0.42, 0.57]},
        }
    return entry


def _privacy(round_number: int, sites: list[str]) -> dict[str, Any]:
    return {
        site: {"noise_multiplier": 1.1, "sample_rate": 0.1, "steps": 10, "delta": 1e-5,
               "epsilon": 1.5 * round_number, "run_epsilon": 1.5 * round_number,
               "accountant": "rdp", "max_grad_norm": 1.0, "num_examples": 64}
        for site in sites
    }  # fmt: skip


def write_run_folder(run_dir: Path, *, error: str | None = None) -> dict[str, Any]:
    """A DP segmentation run of 2 rounds: north and south train, east is held out; south
    is left out of round 2."""
    run_dir.mkdir(parents=True)
    rounds: list[dict[str, Any]] = [{"round": 0, "evaluation": _evaluation(0.1, False)}]
    for number in (1, 2):
        participants = ["north", "south"] if number == 1 else ["north"]
        rounds.append(
            {
                "round": number,
                "participants": participants,
                "left_out": {} if number == 1 else {"south": "no reply before the timeout"},
                "not_connected": [],
                "privacy": _privacy(number, participants),
                "model_sha256": f"{number:064x}",
                "duration_s": 3.5,
                "upload_bytes": 1000,
                "secure_aggregation": None,
                "evaluation": _evaluation(1.0 if number == 2 else 0.7, number == 2),
            }
        )
    results = {
        "schema": SCHEMA,
        "run_name": "study-1",
        "flower_run_id": 7,
        "task": "segmentation",
        "settings": {"rounds": 2, "privacy": {"enabled": True}, "strategy": {"name": "fedavg"}},
        "config_hash": "c" * 64,
        "app": {"app_hash": "a" * 64},
        "security": {"tls": True, "site_authentication": True, "signed_updates": True},
        "secure_aggregation": {"enabled": False, "reason": "fewer than 3 training sites"},
        "status": "failed" if error else "completed",
        "started_at": "2026-12-06T10:00:00.000Z",
        "finished_at": "2026-12-06T10:05:00.000Z",
        "sites": [
            {"name": "north", "role": "train", "num_train": 64, "num_eval": 10},
            {"name": "south", "role": "train", "num_train": 64, "num_eval": 10},
            {"name": "east", "role": "holdout", "num_train": 0, "num_eval": 40},
        ],
        "rounds": rounds,
        "privacy": {
            "sample_level": {"enabled": True, "target_epsilon": 8.0, "noise_multiplier": None,
                             "max_grad_norm": 1.0, "accountant": "rdp"},
            "central": {"enabled": False},
            "sites": {
                site: {"max_epsilon": 10.0, "delta": 1e-5, "epsilon_before_run": 0.0,
                       "epsilon": 3.0, "excluded": None}
                for site in ("north", "south")
            },
        },
    }  # fmt: skip
    if error:
        results["error"] = error
    write_json_atomic(run_dir / RESULTS_FILE, results)
    return results


def test_report_data_follows_the_results(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "run")
    report = build_report(tmp_path / "run")
    assert report["schema"] == "consortia.report/1"
    assert report["run"]["rounds_done"] == 2 and report["run"]["status"] == "completed"
    curves = report["learning_curves"]
    assert curves["metric"] == "dice" and curves["rounds"] == [0, 1, 2]
    assert curves["series"]["east"] == pytest.approx([0.05, 0.35, 0.5])
    cross = report["cross_site"]
    assert cross["model_round"] == 2 and cross["replicates"] == 1000
    rows = {row["name"]: row for row in cross["rows"]}
    assert rows["held-out sites (pooled)"]["intervals"]["dice"] == _INTERVAL
    assert rows["north"]["intervals"] == {"dice": [0.5, 0.7], "iou": None, "hd95": None,
                                          "asd": None}  # fmt: skip
    assert rows["south"]["values"]["dice"] == pytest.approx(0.4)
    north = report["privacy"]["sites"]["north"]
    assert north["limit"] == 10.0 and [r["epsilon"] for r in north["per_round"]] == [1.5, 3.0]
    assert [r["round"] for r in report["privacy"]["sites"]["south"]["per_round"]] == [1]
    [first, second] = report["participation"]
    assert first["participants"] == ["north", "south"] and first["left_out"] == {}
    assert second["left_out"] == {"south": "no reply before the timeout"}
    assert report["provenance"]["present"] is False
    assert [m["round"] for m in report["provenance"]["model_hashes"]] == [1, 2]


def test_report_page_renders_in_chromium(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_run_folder(run_dir, error="site <script>alert(1)</script> & co")
    saliency = run_dir / "saliency" / "east"
    saliency.mkdir(parents=True)
    Image.fromarray(np.full((16, 16, 3), (250, 20, 20), dtype=np.uint8)).save(
        saliency / "case-00.png"
    )
    out = tmp_path / "report"
    report = write_report(run_dir, out, json_copy=True)
    assert sorted(report["figures"]) == ["epsilon", "learning-curves", "participation"]
    for file in report["figures"].values():
        with Image.open(out / file) as png:
            assert png.format == "PNG" and png.width > 400
    assert json.loads((out / REPORT_JSON).read_text())["cross_site"] == report["cross_site"]

    page = render_page(out / REPORT_HTML)
    cross = page.tables["cross-site"]
    assert cross[0][:4] == ["evaluated on", "role", "cases", "dice (0-1)"]
    rows = {row[0]: row for row in cross[1:]}
    assert rows["held-out sites (pooled)"][3] == "0.500 [0.410, 0.580]"
    assert rows["south"][3] == "0.400"  # no interval sent: none shown
    privacy = {row[0]: row for row in page.tables["privacy"][1:]}
    assert privacy["north"][1] == "10.00" and "r2: 3.000" in privacy["north"][6]
    participation = {row[0]: row for row in page.tables["participation"][1:]}
    assert participation["2"][2] == "south: no reply before the timeout"
    # the three figures and the shared saliency map are embedded, nothing fetched
    sources = [image["src"] for image in page.images]
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    # text from the run is shown as text, never run as markup
    assert "<script" not in page.dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.dom
    # the plots were drawn: coloured lines and bars, not only black text on white
    assert page.colourful_pixels() > 20_000


def _consortia(*args: str) -> tuple[int, str]:
    """`consortia ARGS` as the console script runs it (its error handling and exit code
    included), in this process: (exit code, what it logged and printed). The `consortia`
    logger is restored afterwards."""
    logger = logging.getLogger("consortia")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))
    try:
        with (
            mock.patch.object(sys, "argv", ["consortia", *args]),
            contextlib.redirect_stdout(stream),
            contextlib.redirect_stderr(stream),
            pytest.raises(SystemExit) as exit_info,
        ):
            main()
            raise SystemExit(0)
    finally:
        logger.handlers[:] = saved[0]
        logger.propagate = saved[1]
        logger.setLevel(saved[2])
    return int(exit_info.value.code or 0), stream.getvalue()


def test_report_of_a_folder_without_results_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"results\.json: not found"):
        build_report(tmp_path)
    (tmp_path / RESULTS_FILE).write_text('{"schema": "other"}', encoding="utf-8")
    with pytest.raises(ReportError, match=r"results\.json: not a consortia\.results/1 file"):
        build_report(tmp_path)
    code, output = _consortia("report", str(tmp_path))
    assert code == 2
    assert "results.json: not a consortia.results/1 file" in output
    assert not (tmp_path / "report" / REPORT_HTML).exists()


def test_report_cli_writes_html_json_and_tensorboard(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "run")
    code, output = _consortia(
        "report", str(tmp_path / "run"), "--json", "--tensorboard", str(tmp_path / "tb")
    )
    assert code == 0, output
    assert (tmp_path / "run" / "report" / REPORT_HTML).is_file()
    data = json.loads((tmp_path / "run" / "report" / REPORT_JSON).read_text())
    assert data["figures"]["epsilon"] == "figures/epsilon.png"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_report_of_a_run_that_failed_before_any_round(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_json_atomic(
        run_dir / RESULTS_FILE,
        {
            "schema": SCHEMA,
            "run_name": "study-2",
            "task": "segmentation",
            "settings": {"rounds": 3},
            "status": "failed",
            "error": "no training site answered; nothing to train",
            "secure_aggregation": None,
            "sites": [],
            "rounds": [],
        },
    )
    report = write_report(run_dir, tmp_path / "out", json_copy=True)
    assert report["cross_site"] is None and report["participation"] == []
    assert report["security"]["secure_aggregation"]["reason"] == "not decided"
    html = (tmp_path / "out" / REPORT_HTML).read_text()
    assert "no training site answered; nothing to train" in html
    assert "No evaluation was recorded." in html


def test_report_checks_the_provenance_signatures_and_labels_the_signers(tmp_path: Path) -> None:
    """Red-team F17: the report listed provenance signers without verifying them. It now
    checks every signature over the content and labels each signer: valid (identity
    unverified: that needs the CA and the sites' keys) or INVALID."""
    from consortia.common.audit.provenance import countersign, sign_provenance
    from tests.support.provenance_keys import make_authority, site_key

    run_dir = tmp_path / "run"
    write_run_folder(run_dir)
    authority = make_authority()
    body = {
        "schema": "consortia.provenance/1", "run_id": "r", "run_name": "run",
        "config_hash": "c" * 64, "app_hash": "a" * 64, "started_at": "2026-03-01T12:00:00Z",
        "finished_at": "2026-03-01T13:00:00Z", "status": "completed",
        "participants": [{"site": "north", "role": "train", "dataset_fingerprint": "1" * 64}],
        "rounds": [], "privacy": {}, "secure_aggregation": {"enabled": False, "parameters": {}},
        "audit_log": {"file": "audit.jsonl", "head": "0" * 64, "records": 1},
    }  # fmt: skip
    signed = sign_provenance(body, authority.server_key, authority.server_cert_pem)
    signed = countersign(signed, "north", site_key())
    write_json_atomic(run_dir / "provenance.json", signed)
    signers = build_report(run_dir)["provenance"]["signatures"]
    assert signers == [
        "server (signature valid; signer unverified: audit verify --ca)",
        "site:north (signature valid; signer unverified: audit verify --ca)",
    ]
    signed["provenance"]["status"] = "failed"  # altered after signing
    write_json_atomic(run_dir / "provenance.json", signed)
    signers = build_report(run_dir)["provenance"]["signatures"]
    assert signers == ["server (INVALID signature)", "site:north (INVALID signature)"]
