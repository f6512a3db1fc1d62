"""The state a run resumes from: written, read back, and refused when altered."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from consortia.common.config.settings import RunSettings
from consortia.common.files import sha256_file, write_json_atomic
from consortia.server.run.folder import RESULTS_FILE, SCHEMA
from consortia.server.run.privacy import RunPrivacy, SitePrivacy
from consortia.server.run.state import (
    STATE_FILE,
    RunState,
    RunStateError,
    load_strategy_state,
    resume_target,
    save_strategy_state,
)


def _state(run_dir: Path, config_hash: str = "c" * 64) -> RunState:
    (run_dir / "checkpoints").mkdir(parents=True)
    model = run_dir / "checkpoints" / "round-002.pt"
    model.write_bytes(b"model bytes")
    strategy = run_dir / "checkpoints" / "strategy-002.npz"
    digest = save_strategy_state(strategy, {"name": "fedadam", "t": 2, "m": np.ones(3)})
    return RunState(
        round=2,
        model_checkpoint="checkpoints/round-002.pt",
        model_sha256=sha256_file(model),
        strategy_file="checkpoints/strategy-002.npz",
        strategy_sha256=digest,
        privacy={"sites": {}, "excluded": {}, "latest": {}, "central": {}},
        central_privacy=None,
        secure_aggregation=False,
        audit_head="h" * 64,
        config_hash=config_hash,
    )


def test_state_round_trips(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.save(tmp_path)
    assert RunState.load(tmp_path, "c" * 64) == state
    strategy = load_strategy_state(tmp_path / state.strategy_file)
    assert strategy["name"] == "fedadam" and strategy["t"] == 2
    np.testing.assert_array_equal(strategy["m"], np.ones(3))


def test_altered_checkpoint_is_refused(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.save(tmp_path)
    (tmp_path / state.model_checkpoint).write_bytes(b"other model")
    with pytest.raises(RunStateError, match="SHA-256 differs"):
        RunState.load(tmp_path, "c" * 64)


def test_other_run_config_is_refused(tmp_path: Path) -> None:
    _state(tmp_path).save(tmp_path)
    with pytest.raises(RunStateError, match="another run config"):
        RunState.load(tmp_path, "d" * 64)


def test_file_outside_the_run_folder_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    state = _state(run_dir)
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"model bytes")
    data = json.loads(json.dumps(state.__dict__))
    data["model_checkpoint"] = "../elsewhere.pt"
    write_json_atomic(run_dir / STATE_FILE, {"schema": "consortia.run-state/1", **data})
    with pytest.raises(RunStateError, match="outside the run folder"):
        RunState.load(run_dir, "c" * 64)


def test_missing_state_explains(tmp_path: Path) -> None:
    with pytest.raises(RunStateError, match="did not complete a round"):
        RunState.load(tmp_path, "c" * 64)


def test_resume_target_refuses_a_completed_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "study-1"
    _state(run_dir).save(run_dir)
    results: dict[str, object] = {"status": "completed", "settings": {}, "config_hash": "c" * 64}
    write_json_atomic(run_dir / RESULTS_FILE, results)
    with pytest.raises(RunStateError, match=f"not a {re.escape(SCHEMA)} file"):
        resume_target(run_dir)
    results["schema"] = SCHEMA
    write_json_atomic(run_dir / RESULTS_FILE, results)
    with pytest.raises(RunStateError, match="nothing to resume"):
        resume_target(run_dir)
    results["status"] = "running"
    results["flower_run_id"] = 42
    write_json_atomic(run_dir / "results.json", results)
    target = resume_target(run_dir)
    assert (target.run_name, target.flower_run_id, target.last_round) == ("study-1", 42, 2)


def test_strategy_state_refuses_objects(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot store"):
        save_strategy_state(tmp_path / "s.npz", {"bad": object()})


def test_run_privacy_state_round_trips_and_validates() -> None:
    privacy = RunPrivacy(RunSettings())
    privacy.add_site("north", SitePrivacy("f" * 64, 8.0, 1e-5, 0.5))
    privacy.latest["north"] = 1.25
    privacy.exclude("south", "limit reached")
    restored = RunPrivacy(RunSettings())
    # the site joins again at resume, announcing what it has spent by now
    restored.add_site("north", SitePrivacy("f" * 64, 8.0, 1e-5, 1.25))
    restored.load_state_dict(json.loads(json.dumps(privacy.state_dict())))
    assert restored.section() == privacy.section()
    assert restored.sites["north"].epsilon_before_run == 0.5
    bad = privacy.state_dict() | {"latest": {"north": -1.0}}
    with pytest.raises(ValueError, match="negative"):
        restored.load_state_dict(bad)
    with pytest.raises(ValueError, match="unexpected keys"):
        restored.load_state_dict({"sites": {}})
