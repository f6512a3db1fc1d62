"""TensorBoard event files from the `rounds[]` entries of results.json.

Live, as rounds complete (`TensorBoardLog.log_round`), or afterwards for a finished or
running run (`export_run`). Tags (step = the entry's `round`, the model version)::

    eval/holdout/<metric>          eval/training_sites/<metric>     eval/site/<site>/<metric>
    train/<site>/<field>           privacy/<site>/<field>
    round/duration_s  round/upload_bytes  round/total_examples  round/participants  round/left_out

Every numeric field is written (dice, iou, hd95, ..., accuracy, auc, cases; loss, examples,
compute_s; epsilon, run_epsilon, ...); null, NaN, infinite, boolean and non-numeric values
are skipped. `round/participants` and `round/left_out` are counts of sites. Schema of the
entries: docs/results-schema.md. Writing needs the optional `tensorboard` package.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ValidationError

from consortia.common.errors import ConfigError, ConsortiaError
from consortia.common.privacy.spend import spend_error
from consortia.server.run.record import HOLDOUT, TRAINING_SITES, RoundEntry, RunRecord

__all__ = [
    "EVAL_PREFIX",
    "EVENT_FILE_PATTERN",
    "PRIVACY_PREFIX",
    "ROUND_PREFIX",
    "SETTINGS_TAG",
    "SITE_SCOPE",
    "TENSORBOARD_DIR",
    "TRAIN_PREFIX",
    "TensorBoardLog",
    "export_run",
    "open_tensorboard",
    "round_scalars",
]

logger = logging.getLogger("consortia.server")

INSTALL_HINT = 'pip install "consortia[tensorboard]"'
EVENT_FILE_PATTERN = "events.out.tfevents.*"
SEP = "/"
EVAL_PREFIX = "eval"
SITE_SCOPE = "site"
TRAIN_PREFIX = "train"
PRIVACY_PREFIX = "privacy"
ROUND_PREFIX = "round"
SETTINGS_TAG = "settings"
# The run folder's subfolder for live logging (`[run.report] tensorboard = true`).
TENSORBOARD_DIR = "tensorboard"

# Site names and metric keys become one tag component each: no '/' or odd characters.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The pooled scopes of an evaluation, as tagged.
POOLED_SCOPES = (HOLDOUT, TRAINING_SITES)


def _number(value: Any) -> float | None:
    """`value` as a float when it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _safe(name: str) -> bool:
    if _NAME.match(name):
        return True
    logger.warning("tensorboard: %r is no valid tag component; its values are skipped", name)
    return False


def _add_fields(scalars: dict[str, float], prefix: str, fields: Mapping[str, Any] | None) -> None:
    """Every numeric value of the mapping `fields` as `<prefix>/<key>`."""
    for key, value in (fields or {}).items():
        number = _number(value)
        if number is not None and _safe(key):
            scalars[f"{prefix}{SEP}{key}"] = number


def _add_per_site(
    scalars: dict[str, float], prefix: str, per_site: Mapping[str, Mapping[str, Any]] | None
) -> None:
    """`<prefix>/<site>/<key>` for a mapping of site name -> fields."""
    for site, fields in (per_site or {}).items():
        if _safe(site):
            _add_fields(scalars, f"{prefix}{SEP}{site}", fields)


def _dumped(per_site: Mapping[str, BaseModel] | None) -> dict[str, dict[str, Any]]:
    return {site: fields.model_dump() for site, fields in (per_site or {}).items()}


def round_scalars(entry: RoundEntry) -> dict[str, float]:
    """Every numeric metric of one results.json `rounds[]` entry, by TensorBoard tag."""
    scalars: dict[str, float] = {}
    evaluation = entry.evaluation
    if evaluation is not None:
        for scope in POOLED_SCOPES:
            _add_fields(scalars, f"{EVAL_PREFIX}{SEP}{scope}", evaluation.pooled(scope))
        _add_per_site(scalars, f"{EVAL_PREFIX}{SEP}{SITE_SCOPE}", evaluation.sites)
    _add_per_site(scalars, TRAIN_PREFIX, _dumped(entry.train))
    _add_per_site(scalars, PRIVACY_PREFIX, _dumped(entry.privacy))
    round_numbers = {
        "duration_s": entry.duration_s,
        "upload_bytes": entry.upload_bytes,
        "total_examples": entry.total_examples,
    }
    _add_fields(scalars, ROUND_PREFIX, round_numbers)
    round_counts = {"participants": entry.participants, "left_out": entry.left_out}
    for key, value in round_counts.items():
        if value is not None:
            scalars[f"{ROUND_PREFIX}{SEP}{key}"] = float(len(value))
    return scalars


class TensorBoardLog:
    """Writes TensorBoard event files into `folder`, one step per round entry."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(
                f"TensorBoard logging needs the 'tensorboard' package ({err}): {INSTALL_HINT}"
            ) from None
        self.folder = folder
        self._writer: Any = SummaryWriter(log_dir=str(folder))
        logger.info("tensorboard: writing event files to %s", folder)

    def log_round(self, entry: RoundEntry | Mapping[str, Any]) -> None:
        """Write the scalars of one `rounds[]` entry (typed, or as JSON: checked against
        the schema) at step `entry.round`, flushed so that a running TensorBoard shows
        them at once."""
        if not isinstance(entry, RoundEntry):
            try:
                entry = RoundEntry.model_validate(entry)
            except ValidationError as err:
                raise ConsortiaError(f"a rounds[] entry: {spend_error(err)}") from None
        for tag, value in round_scalars(entry).items():
            self._writer.add_scalar(tag, value, global_step=entry.round)
        self._writer.flush()

    def log_settings(self, settings: Mapping[str, Any]) -> None:
        """Write the run's settings as JSON text (tag `settings`), flushed."""
        text = json.dumps(settings, indent=2, sort_keys=True, default=str)
        self._writer.add_text(SETTINGS_TAG, f"```json\n{text}\n```", global_step=0)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def export_run(record: RunRecord, folder: Path) -> int:
    """Write every round of a run's record (finished or running) and its settings into
    event files in `folder`; returns the number of rounds written. `folder` must not hold
    event files already: their curves would be drawn twice."""
    if folder.is_dir() and any(folder.glob(EVENT_FILE_PATTERN)):
        raise ConsortiaError(
            f"{folder} already holds TensorBoard event files: export into an empty folder"
        )
    with TensorBoardLog(folder) as log:
        if record.settings is not None:
            log.log_settings(record.settings.model_dump(exclude_unset=True))
        for entry in record.rounds:
            log.log_round(entry)
    logger.info("tensorboard: %d rounds exported to %s", len(record.rounds), folder)
    return len(record.rounds)


def open_tensorboard(run_dir: Path, settings: Mapping[str, Any]) -> TensorBoardLog | None:
    """Live logging into `run_dir/tensorboard`, the settings written first; None, with a
    warning, where the server lacks the `tensorboard` package (the run goes on)."""
    try:
        log = TensorBoardLog(run_dir / TENSORBOARD_DIR)
    except ConfigError as err:
        logger.warning("TensorBoard logging is off for this run: %s", err)
        return None
    log.log_settings(settings)
    return log
