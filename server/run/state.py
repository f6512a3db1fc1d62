"""What a run resumes from: `checkpoints/state.json`, rewritten after every round.

It names the last completed round, the global model checkpoint and the server
strategy's state (both with their SHA-256), the privacy bookkeeping of the run (sites'
budgets, central DP accountant), whether secure aggregation is on, and the audit log's
head at that moment. `consortia run --resume RUN_DIR` continues from it: the model and
strategy files must match their hashes, and the audit log must still hold that head.
`RunStateStore` writes it after every round and resumes a run from it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from consortia.common.audit.check import audit_hashes
from consortia.common.audit.log import RUN_RESUMED
from consortia.common.errors import ConsortiaError
from consortia.common.files import sha256_file, write_atomic, write_json_atomic
from consortia.common.networks.weights import WeightLayout
from consortia.server.aggregation.aggregation import Aggregation
from consortia.server.aggregation.strategy import StrategyStateError
from consortia.server.run.folder import RESULTS_FILE, RunFolder, read_record
from consortia.server.run.privacy import RunPrivacy

__all__ = [
    "STATE_FILE",
    "ResumeTarget",
    "RunState",
    "RunStateError",
    "RunStateStore",
    "load_strategy_state",
    "resume_target",
    "save_strategy_state",
]

logger = logging.getLogger("consortia.server")

STATE_FILE = "checkpoints/state.json"
SCHEMA = "consortia.run-state/1"
# Where the strategy's state after round N is kept (the one before it is removed).
STRATEGY_FILE = "checkpoints/strategy-{round:03d}.npz"


class RunStateError(ConsortiaError):
    """A run cannot resume: its state file or a file it names is missing or altered."""


@dataclass(frozen=True)
class RunState:
    """The run after its last completed round."""

    round: int
    model_checkpoint: str
    model_sha256: str
    strategy_file: str
    strategy_sha256: str
    privacy: dict[str, Any]
    central_privacy: dict[str, Any] | None
    secure_aggregation: bool
    audit_head: str
    config_hash: str

    def save(self, run_dir: Path) -> None:
        """Write the state atomically (a crash leaves the previous one whole)."""
        write_json_atomic(run_dir / STATE_FILE, {"schema": SCHEMA, **asdict(self)})

    @classmethod
    def load(cls, run_dir: Path, config_hash: str) -> RunState:
        """Read and check the state of the run in `run_dir`; `config_hash` is that of
        the run config the resumed run uses, which must be the one the run started with."""
        path = run_dir / STATE_FILE
        if not path.is_file():
            raise RunStateError(
                f"{path}: no run state; the run did not complete a round, start it again"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise RunStateError(f"{path}: unreadable run state ({err})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise RunStateError(f"{path}: not a {SCHEMA} file")
        data.pop("schema")
        try:
            state = cls(**data)
        except TypeError as err:
            raise RunStateError(f"{path}: {err}") from None
        if not isinstance(state.round, int) or state.round < 0:
            raise RunStateError(f"{path}: round must be a non-negative integer")
        if state.config_hash != config_hash:
            raise RunStateError(
                f"{path}: the run started with another run config (hash "
                f"{state.config_hash[:12]}…, now {config_hash[:12]}…); resume needs the same"
            )
        for name, digest in (
            (state.model_checkpoint, state.model_sha256),
            (state.strategy_file, state.strategy_sha256),
        ):
            _check_file(run_dir, name, digest)
        return state


@dataclass(frozen=True)
class ResumeTarget:
    """What `consortia run --resume RUN_DIR` needs from a run folder."""

    run_name: str
    settings_json: str
    flower_run_id: int | None
    last_round: int


def resume_target(run_dir: Path) -> ResumeTarget:
    """The run in `run_dir` (its settings and name) and the round it resumes after;
    raises `RunStateError` naming the file and problem when it cannot be resumed."""
    try:
        record = read_record(run_dir, missing="no run folder here")
    except ConsortiaError as err:
        raise RunStateError(str(err)) from None
    results_path = run_dir / RESULTS_FILE
    if record.settings is None:
        raise RunStateError(f"{results_path}: no run settings in it")
    if record.status == "completed":
        raise RunStateError(f"{run_dir}: the run completed; there is nothing to resume")
    if record.config_hash is None:
        raise RunStateError(f"{results_path}: no config_hash")
    state = RunState.load(run_dir, record.config_hash)
    settings = record.settings.model_dump(mode="json", exclude_unset=True)
    return ResumeTarget(
        run_name=run_dir.name,
        settings_json=json.dumps(settings),
        flower_run_id=record.flower_run_id,
        last_round=state.round,
    )


def _check_file(run_dir: Path, name: str, digest: str) -> None:
    target = (run_dir / name).resolve()
    if run_dir.resolve() not in target.parents:
        raise RunStateError(f"{run_dir / STATE_FILE}: {name!r} is outside the run folder")
    if not target.is_file():
        raise RunStateError(f"{target}: missing (named in {STATE_FILE})")
    if sha256_file(target) != digest:
        raise RunStateError(f"{target}: SHA-256 differs from the one in {STATE_FILE}")


def save_strategy_state(path: Path, state: Mapping[str, Any]) -> str:
    """Write a strategy's `state_dict()` (arrays, numbers, strings) as a NumPy archive,
    atomically; returns its SHA-256."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        elif isinstance(value, bool | int | float | str):
            arrays[key] = np.asarray(value)
        else:
            raise TypeError(f"strategy state {key!r}: cannot store a {type(value).__name__}")
    write_atomic(path, lambda handle: np.savez(handle, allow_pickle=False, **arrays))
    return sha256_file(path)


def load_strategy_state(path: Path) -> dict[str, Any]:
    """The `state_dict()` saved by `save_strategy_state` (0-d arrays back to scalars)."""
    state: dict[str, Any] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                value = archive[key]
                state[key] = value.item() if value.ndim == 0 else value
    except (OSError, ValueError) as err:
        raise RunStateError(f"{path}: unreadable strategy state ({err})") from None
    for key, value in state.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise RunStateError(f"{path}: {key} is not finite")
    return state


class RunStateStore:
    """Writes a run's state after each round and resumes a run from it: the global
    model, the strategy, the sites' privacy budgets and the aggregation's own state
    (central DP's accountant)."""

    def __init__(
        self,
        folder: RunFolder,
        layout: WeightLayout,
        aggregation: Aggregation,
        privacy: RunPrivacy,
        config_hash: str,
    ) -> None:
        self.folder = folder
        self.layout = layout
        self.aggregation = aggregation
        self.privacy = privacy
        self.config_hash = config_hash

    def save(self, round_number: int, checkpoint: str, digest: str) -> None:
        """Everything a resumed run needs after `round_number` (checkpoints/state.json)."""
        path = self.folder.path
        strategy_file = STRATEGY_FILE.format(round=round_number)
        strategy_digest = save_strategy_state(
            path / strategy_file, self.aggregation.strategy.state_dict()
        )
        RunState(
            round=round_number,
            model_checkpoint=checkpoint,
            model_sha256=digest,
            strategy_file=strategy_file,
            strategy_sha256=strategy_digest,
            privacy=self.privacy.state_dict(),
            central_privacy=self.aggregation.state(),
            secure_aggregation=self.aggregation.secure,
            audit_head=self.folder.audit.head,
            config_hash=self.config_hash,
        ).save(path)
        (path / STRATEGY_FILE.format(round=round_number - 1)).unlink(missing_ok=True)

    def resume(self, state: RunState) -> tuple[int, np.ndarray]:
        """The first round to run and the model it starts from, after restoring the
        strategy, the privacy budgets and the aggregation; the rounds after the state's
        are dropped from the results (they are redone). Raises `RunStateError` when the
        saved state does not fit this run or the audit log lost the state's head."""
        path = self.folder.path
        model = torch.load(path / state.model_checkpoint, map_location="cpu", weights_only=True)
        weights = self.layout.flatten(model)
        try:
            self.aggregation.strategy.load_state_dict(
                load_strategy_state(path / state.strategy_file), vector_size=self.layout.size
            )
            self.privacy.load_state_dict(state.privacy)
            self.aggregation.restore(state.central_privacy)
        except (ValueError, StrategyStateError) as err:
            raise RunStateError(f"cannot resume: {err}") from None
        if state.audit_head not in audit_hashes(self.folder.audit.path):
            raise RunStateError(
                "cannot resume: the audit log no longer holds the record the checkpoint "
                "names (it was truncated or replaced)"
            )
        dropped = self.folder.drop_rounds_after(state.round)
        self.folder.stage(privacy=self.privacy.section())
        logger.info("resuming after round %d (unfinished round(s) %s redone)", state.round, dropped)
        self.folder.event(
            RUN_RESUMED,
            from_round=state.round + 1,
            checkpoint_head=state.audit_head,
            model_sha256=state.model_sha256,
            redone_rounds=dropped,
        )
        self.folder.save()
        return state.round + 1, weights
