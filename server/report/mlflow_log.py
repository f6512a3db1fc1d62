"""MLflow tracking of a run from its folder: params, per-round and per-site metrics, the report.

`[run.report] mlflow = "URI"` logs the run when it ends (`track_run`, called by the
ServerApp) into the experiment named after the study, one MLflow run per run folder
(tag `consortia.run_name`; a resumed run goes on in the same MLflow run and adds the
rounds not logged yet). Metric keys are the TensorBoard tags (`eval/holdout/dice`,
`eval/site/<site>/hd95`, `train/<site>/loss`, `privacy/<site>/epsilon`,
`round/duration_s`, ...) at step = the round; params are the run's settings, flattened
(`training.lr`), plus its config and app hashes; artifacts are `results.json`, the signed
provenance and the HTML report (`report/`). Needs the optional `mlflow` extra
(`mlflow-skinny`); tracking never fails a run: problems are logged as warnings.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from consortia.common.audit.provenance import PROVENANCE_FILE
from consortia.common.errors import ConfigError
from consortia.server.report.tensorboard_log import round_scalars
from consortia.server.run.folder import RESULTS_FILE, read_record
from consortia.server.run.record import RunRecord

__all__ = [
    "INSTALL_HINT",
    "LOGGED_ROUND_TAG",
    "RUN_NAME_TAG",
    "log_run",
    "run_params",
    "track_run",
]

logger = logging.getLogger("consortia.server")

INSTALL_HINT: Final = 'pip install "consortia[mlflow]"'
RUN_NAME_TAG: Final = "consortia.run_name"
#: The last round whose metrics are in the MLflow run (a resumed run adds the later ones).
LOGGED_ROUND_TAG: Final = "consortia.logged_round"
_STATUS_TAG: Final = "consortia.status"
_ALLOW_FILE_STORE: Final = "MLFLOW_ALLOW_FILE_STORE"
_REPORT_ARTIFACTS: Final = "report"
# MLflow's limits: a param value's length, params/tags and metrics per batch.
_PARAM_VALUE_MAX: Final = 6000
_PARAMS_PER_BATCH: Final = 100
_METRICS_PER_BATCH: Final = 1000
# How an MLflow run ends, by the run's status.
_TERMINAL = {"completed": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), item)
    elif value is not None:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        yield prefix, text[:_PARAM_VALUE_MAX]


def run_params(record: RunRecord) -> dict[str, str]:
    """The run's settings flattened to MLflow params (`training.lr` -> "0.01"), with
    `config_hash`, `app_hash` and `task`; unset settings are left out."""
    params: dict[str, str] = {}
    if record.settings is not None:
        params.update(_flatten("", record.settings.model_dump(mode="json", exclude_none=True)))
    for key, value in (
        ("config_hash", record.config_hash),
        ("app_hash", None if record.app is None else record.app.app_hash),
        ("task", record.task),
    ):
        if value is not None:
            params[key] = value
    return params


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise ConfigError(
            f"MLflow tracking needs 'mlflow-skinny' ({err}): {INSTALL_HINT}"
        ) from None
    if uri.startswith("file:"):
        # MLflow 3 keeps its file store in maintenance mode, refused unless asked for; a
        # `file:` URI in the approved run config is that request.
        os.environ.setdefault(_ALLOW_FILE_STORE, "true")
    return MlflowClient(tracking_uri=uri)


def _mlflow_run(client: Any, experiment: str, run_name: str) -> tuple[str, int]:
    """The MLflow run of `run_name` (made if new) and the last round it holds metrics of."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    existing = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1
    )
    if existing:
        run = existing[0]
        return run.info.run_id, int(run.data.tags.get(LOGGED_ROUND_TAG, "-1"))
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name})
    return run.info.run_id, -1


def _log_report(client: Any, run_id: str, run_dir: Path) -> None:
    """The HTML report and its figures under the artifact folder `report/`."""
    from consortia.server.report.writer import write_report  # loads matplotlib, MONAI

    with tempfile.TemporaryDirectory(prefix="consortia-report-") as tmp:
        write_report(run_dir, Path(tmp))
        client.log_artifacts(run_id, tmp, _REPORT_ARTIFACTS)


def log_run(run_dir: Path, uri: str, *, report: bool = True) -> str:
    """Log the run in `run_dir` to the MLflow tracking server at `uri` (see the module
    docstring); returns the MLflow run id. `ConfigError` without the `mlflow` extra."""
    record = read_record(run_dir)
    client = _client(uri)
    from mlflow.entities import Metric, Param, RunTag  # present: `_client` checked

    run_name = record.run_name or run_dir.name
    experiment = str((record.settings.model_extra or {}).get("name") if record.settings else "")
    run_id, logged = _mlflow_run(client, experiment or run_name, run_name)
    params = [Param(key, value) for key, value in sorted(run_params(record).items())]
    for start in range(0, len(params), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start : start + _PARAMS_PER_BATCH])
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, value, now, entry.round)
        for entry in record.rounds
        if entry.round > logged
        for key, value in sorted(round_scalars(entry).items())
    ]
    for start in range(0, len(metrics), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _METRICS_PER_BATCH])
    last = max((entry.round for entry in record.rounds), default=logged)
    tags = [
        RunTag(LOGGED_ROUND_TAG, str(max(last, logged))),
        RunTag(_STATUS_TAG, str(record.status)),
    ]
    client.log_batch(run_id, tags=tags)
    for name in (RESULTS_FILE, PROVENANCE_FILE):
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    if report:
        _log_report(client, run_id, run_dir)
    client.set_terminated(run_id, status=_TERMINAL.get(str(record.status), "FINISHED"))
    logger.info("mlflow: run %s logged to %s (MLflow run %s)", run_name, uri, run_id)
    return run_id


def track_run(run_dir: Path, uri: str | None) -> None:
    """`log_run` for the ServerApp at a run's end: nothing without `uri`; a failure
    (no `mlflow` extra, tracking server unreachable) is a warning, never the run's end."""
    if uri is None:
        return
    try:
        log_run(run_dir, uri)
    except Exception as err:  # tracking is optional: the run's outcome stands
        logger.warning("MLflow tracking of %s failed: %s", run_dir.name, err)
