"""The coordinator's Flower ServerApp (Message API): wires settings, run folder, loop."""

from __future__ import annotations

import logging
import os
import re
from functools import partial
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.exit import add_exit_handler

from consortia.common.audit.log import RUN_FAILED, RUN_FINISHED, RUN_STARTED, RUN_STOPPED
from consortia.common.config.settings import RunSettings, run_settings_from_json
from consortia.common.crypto.certificates import load_server_key
from consortia.common.errors import ConsortiaError
from consortia.common.logs import add_file_handler, setup_logging
from consortia.common.wire import records as rk
from consortia.common.wire.run_identity import RunIdentity, app_hash_details
from consortia.server.control import take_stop_reason
from consortia.server.exchange.reply_verifier import ReplyVerifier
from consortia.server.launch.superlink import RUNS_DIR_ENV
from consortia.server.registry.server_security import ServerSecurity
from consortia.server.registry.site_registry import SiteRegistry
from consortia.server.report.mlflow_log import track_run
from consortia.server.run.federation import Federation
from consortia.server.run.folder import RunFolder
from consortia.server.run.provenance import write_run_provenance
from consortia.server.run.state import RunState

__all__ = ["RUNS_DIR_ENV", "app", "runs_dir"]
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
    security = ServerSecurity.from_env()
    if security is not None:
        load_server_key(security.key)  # fail now, not when the provenance is signed
    identity = RunIdentity.of(settings)
    folder, state = _open_folder(folder_path, settings, identity, context, security)
    if security is None:
        logger.warning("insecure server: no TLS, no site authentication, unsigned updates")
    verifier = ReplyVerifier(
        None if security is None else SiteRegistry(security.registry_dir), context.run_id
    )
    federation = Federation(
        grid, settings, folder, verifier=verifier, identity=identity, resume_from=state
    )
    # A stop: Flower's SIGINT handler forces the process down 5 s after it starts, often
    # before SystemExit reaches this frame; its exit handlers run before that timer.
    record_stop = partial(_record_stop, folder, settings, identity, security)
    add_exit_handler(record_stop, run_before_force_exit=True)
    try:
        federation.run()
    except (KeyboardInterrupt, SystemExit):
        record_stop()
        raise
    except BaseException as err:
        logger.error("run %s failed: %s", run_name, err)
        folder.event(RUN_FAILED, reason=str(err))
        folder.finish("failed", error=str(err))
        write_run_provenance(folder, settings, identity, security)
        track_run(folder_path, settings.report.mlflow)
        raise
    status = "completed" if federation.stopped is None else "stopped"
    folder.event(RUN_FINISHED, status=status)
    folder.finish(status)
    write_run_provenance(folder, settings, identity, security)
    track_run(folder_path, settings.report.mlflow)
    if federation.stopped is not None:
        logger.error(
            "run %s stopped: %s; resume it with `consortia run --resume %s`",
            run_name,
            federation.stopped,
            folder_path,
        )
        return
    logger.info("run %s completed; results in %s", run_name, folder_path)


def _open_folder(
    path: Path,
    settings: RunSettings,
    identity: RunIdentity,
    context: Context,
    security: ServerSecurity | None,
) -> tuple[RunFolder, RunState | None]:
    """The run's folder: reopened with its saved state to resume, or a new one."""
    if str(context.run_config.get(rk.RUN_CONFIG_RESUME, "")).lower() == "true":
        folder, state = _reopen(path, identity.config_hash, context.run_id)
        add_file_handler(path / "server.log")
        logger.info("resuming run %s after round %d", path.name, state.round)
        return folder, state
    protection = {
        "tls": security is not None,
        "site_authentication": security is not None,
        "signed_updates": security is not None,
    }
    return _new_folder(path, settings, identity, context.run_id, protection), None


def _record_stop(
    folder: RunFolder,
    settings: RunSettings,
    identity: RunIdentity,
    security: ServerSecurity | None,
) -> None:
    """Record a run stopped from outside (`consortia runs stop`, Ctrl-C), resumable, with
    the reason its stop request gave; nothing when the run has ended already."""
    if folder.record.status != "running":
        return
    reason = take_stop_reason(folder.path)
    logger.error("run %s stopped: %s", folder.path.name, reason)
    stopped_in = max((entry.round for entry in folder.record.rounds), default=0) + 1
    folder.event(RUN_STOPPED, round=stopped_in, reason=reason)
    folder.event(RUN_FINISHED, status="stopped", reason=reason)
    folder.finish("stopped", stopped={"round": stopped_in, "reason": reason})
    write_run_provenance(folder, settings, identity, security)


def _new_folder(
    path: Path,
    settings: RunSettings,
    identity: RunIdentity,
    flower_run_id: int,
    protection: dict[str, bool],
) -> RunFolder:
    """The folder of a new run, its header written and its start audited."""
    folder = RunFolder(
        path,
        {
            "run_name": path.name,
            "flower_run_id": flower_run_id,
            "task": settings.task.value,
            "settings": settings.model_dump(mode="json"),
            "config_hash": identity.config_hash,
            "app": app_hash_details(),
            "security": protection,
        },
    )
    add_file_handler(path / "server.log")
    folder.event(
        RUN_STARTED,
        run_name=path.name,
        flower_run_id=flower_run_id,
        rounds=settings.rounds,
        config_hash=identity.config_hash,
        app_hash=identity.app_hash,
        **protection,
    )
    return folder


def _reopen(path: Path, config_hash: str, flower_run_id: int) -> tuple[RunFolder, RunState]:
    """The run folder and state of a run to resume (checked before anything is sent)."""
    folder = RunFolder.reopen(path)
    state = RunState.load(path, config_hash)
    folder.resume(flower_run_id, after_round=state.round)
    return folder, state
