"""The coordinator's Flower ServerApp (Message API): wires settings, run folder, loop."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from consortia.common import records as rk
from consortia.common.errors import ConsortiaError
from consortia.common.logs import add_file_handler, setup_logging
from consortia.common.settings import run_settings_from_json
from consortia.server.federation import Federation
from consortia.server.run_folder import RunFolder

__all__ = ["RUNS_DIR_ENV", "app", "runs_dir"]

RUNS_DIR_ENV = "CONSORTIA_RUNS_DIR"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

logger = logging.getLogger("consortia.server")

app = ServerApp()


def runs_dir() -> Path:
    """Where this server keeps run folders: set by `consortia server start`."""
    return Path(os.environ.get(RUNS_DIR_ENV) or Path.home() / ".consortia" / "runs")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one study as described by the coordinator's run config."""
    setup_logging()
    settings = run_settings_from_json(str(context.run_config[rk.RUN_CONFIG_SETTINGS]))
    run_name = str(context.run_config.get(rk.RUN_CONFIG_RUN_NAME) or f"flwr-{context.run_id}")
    if not _RUN_NAME.fullmatch(run_name):
        raise ConsortiaError(f"run config: {rk.RUN_CONFIG_RUN_NAME}: invalid run name")
    folder_path = runs_dir() / run_name
    folder = RunFolder(
        folder_path,
        {
            "run_name": run_name,
            "flower_run_id": context.run_id,
            "task": settings.task.value,
            "settings": settings.model_dump(mode="json"),
        },
    )
    add_file_handler(folder_path / "server.log")
    folder.event("run_started", run_name=run_name, rounds=settings.rounds)
    try:
        Federation(grid, settings, folder).run()
    except BaseException as err:
        logger.error("run %s failed: %s", run_name, err)
        folder.event("run_failed", reason=str(err))
        folder.finish("failed", error=str(err))
        raise
    folder.event("run_done")
    folder.finish("completed")
    logger.info("run %s completed; results in %s", run_name, folder_path)
