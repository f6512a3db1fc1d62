"""TensorBoard export of results.json rounds: tags, steps and values read back from real
event files with TensorBoard's own reader."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from consortia.common.errors import ConfigError, ConsortiaError
from consortia.server.report.tensorboard_log import (
    EVENT_FILE_PATTERN,
    SETTINGS_TAG,
    TensorBoardLog,
    export_run,
    round_scalars,
)
from consortia.server.run.record import RoundEntry, RunRecord

SEG_METRICS = ("dice", "iou", "hd95", "asd", "cases", "dice_c1", "hd95_undefined")


def _seg_metrics(dice: float, cases: int) -> dict[str, Any]:
    return {
        "dice": dice,
        "iou": dice - 0.1,
        "hd95": None,  # NaN written as null: surface metrics only for the final model
        "asd": None,
        "cases": cases,
        "dice_c1": dice,
        "hd95_undefined": 0,
        "asd_undefined": 0,
    }


def _round0() -> dict[str, Any]:
    """The initial model: evaluation only, no participants or training."""
    return {
        "round": 0,
        "checkpoint": "checkpoints/round-000.pt",
        "model_sha256": "ab" * 32,
        "evaluation": {
            "sites": {"hospital-a": _seg_metrics(0.1, 4), "clinic_b.2": _seg_metrics(0.2, 3)},
            "holdout": _seg_metrics(0.15, 5),
            "training_sites": _seg_metrics(0.12, 7),
        },
    }


def _seg_round(number: int, dice: float) -> dict[str, Any]:
    return {
        "round": number,
        "participants": ["clinic_b.2", "hospital-a"],
        "train": {
            "hospital-a": {"examples": 12, "loss": 0.9 / number, "compute_s": 3.5},
            "clinic_b.2": {"examples": 8, "loss": float("nan"), "compute_s": 2.25},
        },
        "left_out": {"hospital-c": "no reply before the timeout"},
        "total_examples": 20,
        "checkpoint": f"checkpoints/round-{number:03d}.pt",
        "model_sha256": "cd" * 32,
        "upload_bytes": 123456,
        "duration_s": 10.5 * number,
        "privacy": {
            "hospital-a": {
                "noise_multiplier": 1.1,
                "sample_rate": 0.25,
                "steps": 4,
                "delta": 1e-5,
                "epsilon": 0.5 * number + 1.0,
                "run_epsilon": 0.5 * number,
                "accountant": "rdp",
                "max_grad_norm": 1.0,
                "num_examples": 12,
            }
        },
        "secure_aggregation": None,
        "strategy": {"name": "fedavg", "unchanged": None},
        "evaluation": {
            "sites": {"hospital-a": _seg_metrics(dice, 4), "clinic_b.2": _seg_metrics(dice, 3)},
            "holdout": _seg_metrics(dice + 0.05, 5),
            "training_sites": _seg_metrics(dice + 0.01, 7),
        },
    }


def _cls_round() -> dict[str, Any]:
    metrics = {
        "accuracy": 0.8,
        "sensitivity": 0.75,
        "specificity": 0.85,
        "f1": 0.7,
        "auc": 0.9,
        "cases": 40,
    }
    return {
        "round": 3,
        "participants": ["a"],
        "train": {"a": {"examples": 40, "loss": 0.4, "compute_s": 1.0}},
        "left_out": {},
        "total_examples": 40,
        "upload_bytes": 1000,
        "duration_s": 2.0,
        "privacy": {},
        "evaluation": {
            "sites": {"a": metrics, "h": {**metrics, "auc": None}},
            "holdout": {**metrics, "auc": float("nan")},
            "training_sites": None,  # no training site answered the evaluation
        },
    }


def _entry(data: dict[str, Any]) -> RoundEntry:
    return RoundEntry.model_validate(data)


def _record(data: dict[str, Any]) -> RunRecord:
    return RunRecord.from_json(data, "results.json")


def _results() -> dict[str, Any]:
    return {
        "schema": "consortia.results/1",
        "run_name": "demo-seg",
        "task": "segmentation",
        "settings": {"rounds": 2, "task": "segmentation", "model": {"name": "unet"}},
        "status": "completed",
        "rounds": [_round0(), _seg_round(1, 0.5), _seg_round(2, 0.6)],
    }


def _read(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def _curve(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_round_scalars_of_a_segmentation_round() -> None:
    entry = _entry(_seg_round(2, 0.6))
    before = copy.deepcopy(entry)
    scalars = round_scalars(entry)
    assert entry == before  # pure: the entry is not changed
    assert scalars == round_scalars(entry)
    assert scalars["eval/holdout/dice"] == pytest.approx(0.65)
    assert scalars["eval/training_sites/iou"] == pytest.approx(0.51)
    assert scalars["eval/site/clinic_b.2/cases"] == 3.0
    assert scalars["eval/site/hospital-a/dice_c1"] == pytest.approx(0.6)
    assert scalars["eval/site/hospital-a/hd95_undefined"] == 0.0
    assert scalars["train/hospital-a/loss"] == pytest.approx(0.45)
    assert scalars["train/hospital-a/examples"] == 12.0
    assert scalars["train/clinic_b.2/compute_s"] == 2.25
    assert scalars["privacy/hospital-a/epsilon"] == pytest.approx(2.0)
    assert scalars["privacy/hospital-a/run_epsilon"] == pytest.approx(1.0)
    assert scalars["privacy/hospital-a/steps"] == 4.0
    assert scalars["round/duration_s"] == 21.0
    assert scalars["round/upload_bytes"] == 123456.0
    assert scalars["round/total_examples"] == 20.0
    assert scalars["round/participants"] == 2.0
    assert scalars["round/left_out"] == 1.0
    # null and NaN values, strings and non-metric fields give no tag
    assert "eval/holdout/hd95" not in scalars and "eval/site/hospital-a/asd" not in scalars
    assert "train/clinic_b.2/loss" not in scalars
    assert not any("accountant" in tag or "sha256" in tag for tag in scalars)
    assert not any(tag.startswith(("strategy", "secure")) for tag in scalars)
    assert all(isinstance(v, float) and math.isfinite(v) for v in scalars.values())


def test_round_scalars_of_round_zero_has_evaluation_only() -> None:
    scalars = round_scalars(_entry(_round0()))
    assert {tag.split("/")[0] for tag in scalars} == {"eval"}
    assert scalars["eval/training_sites/cases"] == 7.0
    assert len(scalars) == 4 * 6  # 6 numbers each: holdout, training sites, 2 sites


def test_round_scalars_of_a_classification_round() -> None:
    scalars = round_scalars(_entry(_cls_round()))
    assert scalars["eval/holdout/accuracy"] == 0.8
    assert "eval/holdout/auc" not in scalars  # NaN
    assert scalars["eval/site/a/auc"] == 0.9 and "eval/site/h/auc" not in scalars
    assert scalars["eval/site/h/specificity"] == 0.85
    assert not any(tag.startswith("eval/training_sites") for tag in scalars)
    assert not any(tag.startswith("privacy") for tag in scalars)
    assert scalars["round/left_out"] == 0.0 and scalars["round/participants"] == 1.0


def test_round_scalars_skips_bools_and_unsafe_names() -> None:
    entry = {
        "round": 1,
        "evaluation": {"sites": {"a/b": {"dice": 0.5}, "ok": {"dice": 0.5, "x y": 1}}},
    }
    assert round_scalars(_entry(entry)) == {"eval/site/ok/dice": 0.5}
    # A bool or a string where a number belongs never reaches a tag: the record refuses it.
    for field, value in (("duration_s", True), ("upload_bytes", "12")):
        with pytest.raises(ValidationError, match=field):
            _entry({**entry, field: value})


def test_log_round_is_readable_live(tmp_path: Path) -> None:
    folder = tmp_path / "tensorboard"
    with TensorBoardLog(folder) as log:
        for entry in _results()["rounds"]:
            log.log_round(entry)  # as JSON, the way the round loop holds it
        events = _read(folder)  # before close: every round was flushed
        assert _curve(events, "round/participants") == [(1, 2.0), (2, 2.0)]
        dice = _curve(events, "eval/holdout/dice")
        assert [step for step, _ in dice] == [0, 1, 2]
        assert [value for _, value in dice] == pytest.approx([0.15, 0.55, 0.65])
    events = _read(folder)
    tags = events.Tags()["scalars"]
    assert "eval/holdout/hd95" not in tags and "train/clinic_b.2/loss" not in tags
    losses = _curve(events, "train/hospital-a/loss")
    assert [step for step, _ in losses] == [1, 2]
    assert [value for _, value in losses] == pytest.approx([0.9, 0.45])
    assert _curve(events, "eval/site/clinic_b.2/cases") == [(0, 3.0), (1, 3.0), (2, 3.0)]
    assert _curve(events, "privacy/hospital-a/run_epsilon") == [(1, 0.5), (2, 1.0)]


def test_export_run_writes_every_round_and_the_settings(tmp_path: Path) -> None:
    results = _results()
    results["rounds"].append(_cls_round())
    folder = tmp_path / "export"
    assert export_run(_record(results), folder) == 4
    events = _read(folder)
    assert [step for step, _ in _curve(events, "eval/training_sites/dice")] == [0, 1, 2]
    assert _curve(events, "eval/holdout/accuracy") == [(3, pytest.approx(0.8))]
    assert _curve(events, "round/duration_s") == [(1, 10.5), (2, 21.0), (3, 2.0)]
    texts = events.Tensors(f"{SETTINGS_TAG}/text_summary")
    assert len(texts) == 1
    text = texts[0].tensor_proto.string_val[0].decode()
    body = text.removeprefix("```json\n").removesuffix("\n```")
    assert json.loads(body) == results["settings"]
    with pytest.raises(ConsortiaError, match="already holds"):
        export_run(_record(results), folder)  # curves would be drawn twice
    assert len(list(folder.glob(EVENT_FILE_PATTERN))) == 1


def test_export_run_counts_a_running_run(tmp_path: Path) -> None:
    running = {"schema": "consortia.results/1", "status": "running"}
    assert export_run(_record({**running, "rounds": []}), tmp_path / "empty") == 0
    assert export_run(_record({**running, "rounds": [_round0()]}), tmp_path / "one") == 1


@pytest.mark.parametrize(
    "results",
    [
        {},
        {"rounds": {}},
        {"schema": "consortia.results/1", "rounds": {}},
        {"schema": "consortia.results/1", "rounds": [{"evaluation": {}}]},
        {"schema": "consortia.results/1", "rounds": [{"round": True}]},
    ],
)
def test_export_run_rejects_malformed_results(tmp_path: Path, results: Any) -> None:
    with pytest.raises(ConsortiaError):
        export_run(_record(results), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_tensorboard_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r'pip install "consortia\[tensorboard\]"'):
        TensorBoardLog(tmp_path / "tb")
