"""The typed run record: results.json as the round loop writes it loads into `RunRecord`
and back unchanged, malformed records are refused naming the field, the one privacy
spend record travels the wire and the ledger, and docs/results-schema.md documents
every field of the model."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord
from pydantic import BaseModel

from consortia.common.config.settings import RunSettings
from consortia.common.errors import ConsortiaError
from consortia.common.privacy.ledger import LedgerEntry, LedgerHead
from consortia.common.privacy.spend import PrivacySpend
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import RecordFieldError
from consortia.server.audit.privacy_results import read_run_records, spent_of_ledger_entry
from consortia.server.run.folder import RESULTS_FILE, RunFolder, read_record
from consortia.server.run.privacy import RunPrivacy, SitePrivacy, spend_record
from consortia.server.run.record import HOLDOUT, TRAINING_SITES, RoundSpent, RunRecord

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DOC = ROOT / "docs" / "results-schema.md"
FP = "ab" * 32
SPEND = PrivacySpend(
    noise_multiplier=1.1,
    sample_rate=0.25,
    steps=4,
    delta=1e-5,
    epsilon=2.5,
    run_epsilon=1.5,
    accountant="rdp",
    max_grad_norm=1.0,
)


def _settings() -> RunSettings:
    return RunSettings.model_validate({"task": "segmentation", "rounds": 2})


def _write_run(run_dir: Path) -> RunFolder:
    """A run folder written the way the server app and the round loop write it."""
    settings = _settings()
    folder = RunFolder(
        run_dir,
        {
            "run_name": run_dir.name,
            "flower_run_id": 7,
            "task": "segmentation",
            "settings": settings.model_dump(mode="json"),
            "config_hash": "cd" * 32,
            "app": {"app_hash": "ef" * 32, "version": "1.0", "packages": ["a"], "files": 3},
            "security": {"tls": True, "site_authentication": True, "signed_updates": True},
        },
    )
    privacy = RunPrivacy(settings)
    privacy.add_site("north", SitePrivacy(FP, 10.0, 1e-5, 1.0))
    privacy.record("north", SPEND)
    folder.stage(
        sites=[
            {
                "node_id": 1,
                "name": "north",
                "role": "train",
                "num_train": 8,
                "num_eval": 2,
                "data_fingerprint": FP,
            },
            {
                "node_id": 2,
                "name": "east",
                "role": "holdout",
                "num_train": 0,
                "num_eval": 5,
                "data_fingerprint": "01" * 32,
            },
        ]
    )
    folder.update(privacy=privacy.section(), secure_aggregation={"enabled": False, "reason": "x"})
    folder.update_round(0, checkpoint="checkpoints/round-000.pt", model_sha256="00" * 32)
    head = {"sha256": "77" * 32, "entries": 3}
    folder.update_round(
        1,
        participants=["north"],
        train={"north": {"examples": 8, "compute_s": 1.5, "update_norm": 0.3}},
        left_out={"south": "no reply before the timeout"},
        total_examples=8,
        checkpoint="checkpoints/round-001.pt",
        model_sha256="11" * 32,
        privacy={"north": spend_record(SPEND, 8)},
        ledger_heads={"north": head},
        secure_aggregation=None,
        strategy={"name": "krum", "unchanged": None, "kept": ["north"], "krum_scores": {}},
    )
    folder.update_round(
        1,
        duration_s=2.5,
        upload_bytes=1024,
        not_connected=[],
        evaluation={
            "sites": {"north": {"dice": 0.5, "hd95": float("nan")}, "east": {"dice": 0.4}},
            HOLDOUT: {"dice": 0.4},
            TRAINING_SITES: {"dice": 0.5},
            "intervals": {
                "level": 0.95,
                "replicates": 1000,
                "method": "stratified",
                "sites": {"north": {"dice": [0.4, 0.6], "iou": None}},
                HOLDOUT: {"dice": [0.3, 0.5]},
                TRAINING_SITES: None,
            },
        },
    )
    folder.update(ledger_heads={"north": head}, node_audit_heads={"north": "88" * 32})
    folder.finish("completed")
    return folder


def test_a_run_as_written_loads_typed_and_round_trips(tmp_path: Path) -> None:
    folder = _write_run(tmp_path / "study")
    on_disk = json.loads((tmp_path / "study" / RESULTS_FILE).read_text())
    record = read_record(tmp_path / "study")
    assert record == folder.record
    assert record.to_json() == on_disk  # nothing added, nothing lost
    assert record.status == "completed" and record.planned_rounds == 2
    assert record.roles() == {"north": "train", "east": "holdout"}
    entry = record.round_entry(1)
    assert entry is not None and entry.evaluation is not None
    assert entry.evaluation.sites["north"] == {"dice": 0.5, "hd95": None}  # NaN as null
    assert entry.evaluation.pooled(HOLDOUT) == {"dice": 0.4}
    assert entry.evaluation.intervals is not None
    assert entry.evaluation.intervals.of_group(HOLDOUT) == {"dice": [0.3, 0.5]}
    assert entry.privacy is not None and entry.privacy["north"].spend() == SPEND
    assert entry.privacy["north"].num_examples == 8
    assert entry.strategy is not None and entry.strategy.kept == ["north"]
    assert entry.strategy.model_extra == {"krum_scores": {}}  # a strategy's own details
    assert record.ledger_heads["north"].head() == LedgerHead("77" * 32, 3)
    assert record.privacy is not None and record.privacy.sites["north"].epsilon == 2.5
    assert [e.round for e in record.trained_rounds()] == [1]


def test_files_of_earlier_versions_load(tmp_path: Path) -> None:
    """A record written before clipping norms, example counts, fingerprints and the
    intervals were kept: the optional parts are absent, nothing is refused."""
    old: dict[str, Any] = {
        "schema": "consortia.results/1",
        "run_name": "old",
        "status": "completed",
        "sites": [{"name": "a", "role": "train"}],
        "privacy": {
            "sample_level": {"enabled": True, "accountant": "rdp"},
            "sites": {"a": {"max_epsilon": 8.0, "delta": 1e-5, "epsilon_before_run": 0}},
        },
        "rounds": [
            {"round": 0},
            {"round": 1, "participants": ["a"], "privacy": {"a": SPEND.model_dump()}},
        ],
    }
    del old["rounds"][1]["privacy"]["a"]["max_grad_norm"]
    (tmp_path / RESULTS_FILE).write_text(json.dumps(old))
    record = read_record(tmp_path)
    entry = record.round_entry(1)
    assert entry is not None and entry.privacy is not None
    assert entry.privacy["a"].max_grad_norm is None and entry.privacy["a"].num_examples is None
    assert record.settings is None and record.privacy is not None
    assert record.privacy.sites["a"].dataset_fingerprint is None
    with pytest.raises(ConsortiaError, match=r"privacy\.sites\.a\.dataset_fingerprint: missing"):
        read_run_records(tmp_path)  # the audit needs what the report can do without


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rounds": [{"round": 1, "typo": 1}]}, r"rounds\[0\]\.typo"),
        ({"rounds": [{"round": True}]}, r"rounds\[0\]\.round"),
        ({"rounds": [{"round": 1, "duration_s": "2.5"}]}, r"rounds\[0\]\.duration_s"),
        (
            {"rounds": [{"round": 1, "privacy": {"a": {**SPEND.model_dump(), "steps": -1}}}]},
            r"rounds\[0\]\.privacy\.a\.steps",
        ),
        ({"sites": [{"name": "a"}]}, r"sites\[0\]\.role"),
        ({"status": "completed", "extra": 1}, r"'extra'"),
    ],
)
def test_malformed_records_are_refused_naming_the_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    (tmp_path / RESULTS_FILE).write_text(json.dumps({"schema": "consortia.results/1", **change}))
    with pytest.raises(ConsortiaError, match=field) as caught:
        read_record(tmp_path)
    assert str(tmp_path / RESULTS_FILE) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{broken", "unreadable"), ("[1]", "not a consortia.results/1 file"), ("{}", "not a")],
)
def test_unusable_files_name_the_file(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / RESULTS_FILE).write_text(text)
    with pytest.raises(ConsortiaError, match=problem):
        read_record(tmp_path)
    with pytest.raises(ConsortiaError, match="no run here"):
        read_record(tmp_path / "missing", missing="no run here")


def test_a_write_the_schema_lacks_fails_and_leaves_the_file(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run", {"run_name": "run", "task": "segmentation"})
    before = (tmp_path / "run" / RESULTS_FILE).read_text()
    with pytest.raises(ConsortiaError, match=r"rounds\[0\]\.left_out"):
        folder.update_round(1, left_out=["not", "a", "mapping"])
    assert (tmp_path / "run" / RESULTS_FILE).read_text() == before


def test_the_spend_record_travels_the_wire_unchanged() -> None:
    record = SPEND.to_record()
    assert set(record) == {
        rk.P_NOISE_MULTIPLIER,
        rk.P_SAMPLE_RATE,
        rk.P_STEPS,
        rk.P_DELTA,
        rk.P_EPSILON,
        rk.P_RUN_EPSILON,
        rk.P_ACCOUNTANT,
        rk.P_MAX_GRAD_NORM,
    }
    assert record[rk.P_RUN_EPSILON] == 1.5 and record[rk.P_ACCOUNTANT] == "rdp"
    assert PrivacySpend.from_record(record) == SPEND


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (rk.P_STEPS, 0, "must be positive"),
        (rk.P_STEPS, 2.5, "must be an integer"),
        (rk.P_SAMPLE_RATE, 1.5, "less than or equal to 1"),
        (rk.P_NOISE_MULTIPLIER, 0.0, "greater than 0"),
        (rk.P_EPSILON, float("inf"), "must be finite"),
        (rk.P_RUN_EPSILON, 9.0, "exceeds"),
        (rk.P_ACCOUNTANT, "gdp", "Input should be"),
        (rk.P_DELTA, None, "record has no"),
    ],
)
def test_from_record_names_the_field(key: str, value: Any, problem: str) -> None:
    fields = dict(SPEND.to_record())
    if value is None:
        del fields[key]
    else:
        fields[key] = value
    with pytest.raises(RecordFieldError, match=problem) as caught:
        PrivacySpend.from_record(ConfigRecord(fields))
    assert key in str(caught.value)


def test_a_ledger_entry_is_a_spend_record() -> None:
    entry = LedgerEntry(
        **SPEND.model_dump(),
        run_id="study",
        round=3,
        num_examples=8,
        recorded_at="2026-12-07T10:00:00Z",
    )
    assert isinstance(entry, PrivacySpend) and entry.spend() == SPEND
    assert entry.to_record() == SPEND.to_record()  # what the reply carries
    server = spent_of_ledger_entry(entry)
    assert isinstance(server, RoundSpent) and server.num_examples == 8
    assert spend_record(SPEND, 8) == server.model_dump()


def _fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    """Every JSON key of `model` and of the models it holds."""
    if model in seen:
        return set()
    seen.add(model)
    names = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        for kind in _types(info.annotation):
            names |= _fields(kind, seen)
    return names


def _types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [kind for arg in typing.get_args(annotation) for kind in _types(arg)]


def test_every_field_of_the_record_is_documented() -> None:
    documented = set(re.findall(r"`([a-z_0-9]+)`", SCHEMA_DOC.read_text(encoding="utf-8")))
    missing = sorted(_fields(RunRecord, set()) - documented)
    assert not missing, f"fields of RunRecord not in {SCHEMA_DOC.name}: {missing}"
