"""Coordinator-side commands: `consortia server start`, `consortia run`, `consortia demo`."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from consortia.common.config.settings import (
    RunSettings,
    Task,
    load_run_settings,
    run_settings_from_json,
)
from consortia.common.errors import ConsortiaError
from consortia.common.processes import ProcessGroup, stop_on_sigterm
from consortia.server.audit.cli import audit_app
from consortia.server.control import SuperLinkConnection, stop_run, stream_logs
from consortia.server.export.cli import add_model_commands
from consortia.server.launch.certs_cli import certs_app
from consortia.server.launch.simulation import run_simulation
from consortia.server.launch.submit import submit_run, write_app_dir
from consortia.server.launch.superlink import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_FLEET_PORT,
    start_superlink,
)
from consortia.server.registry.cli import site_app
from consortia.server.registry.server_security import (
    CA_FILE,
    DEFAULT_SERVER_CERTS,
    ServerSecurity,
    registry_dir,
)
from consortia.server.report.cli import report_command
from consortia.server.report.progress import watch_run
from consortia.server.runs_cli import print_outcome, runs_app, wait_until_ended

__all__ = ["register"]

server_app = typer.Typer(
    help="Run the coordinator's server (a Flower SuperLink).", no_args_is_help=True
)
console = Console()
logger = logging.getLogger("consortia.server")


_INSECURE_HELP = "Plain HTTP, no site authentication, no signature checks: local experiments only."
_DEFAULT_STATE = Path.home() / ".consortia" / "server"


@server_app.command("start")
def server_start(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for all).")] = (
        "127.0.0.1"
    ),
    port: Annotated[
        int, typer.Option(help="Port of the Fleet API, the only API the sites reach.")
    ] = DEFAULT_FLEET_PORT,
    control_port: Annotated[
        int,
        typer.Option(
            help="Port of the Control/Runtime APIs, on 127.0.0.1 only: `consortia run` and "
            "`consortia site` reach it from this machine (or through an SSH tunnel)."
        ),
    ] = DEFAULT_CONTROL_PORT,
    state_dir: Annotated[
        Path | None,
        typer.Option(help="SuperLink database, Flower home, logs [~/.consortia/server]."),
    ] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run folders are written.")] = Path("runs"),
    certs: Annotated[
        Path,
        typer.Option(help="Folder with ca.pem, server.pem, server.key (consortia certs server)."),
    ] = DEFAULT_SERVER_CERTS,
    insecure: Annotated[bool, typer.Option("--insecure", help=_INSECURE_HELP)] = False,
) -> None:
    """Start the SuperLink (TLS, registered sites only); runs until Ctrl-C."""
    stop_on_sigterm()
    state = state_dir or _DEFAULT_STATE
    security = None if insecure else ServerSecurity(certs, registry_dir(state)).check()
    if security is None:
        logger.warning("server started with --insecure: no TLS, no site authentication")
    if port == control_port:
        raise typer.BadParameter("--port and --control-port must differ")
    with ProcessGroup() as group:
        endpoints = start_superlink(
            group,
            state,
            runs_dir,
            host=host,
            port=port,
            control_port=control_port,
            security=security,
        )
        mode = "plain HTTP (--insecure)" if security is None else "TLS, registered sites only"
        console.print(
            f"SuperLink: Fleet API for the sites on {endpoints.fleet} ({mode}); Control API "
            f"for the coordinator on {endpoints.control} (this machine only); run folders in "
            f"{runs_dir.resolve()}"
        )
        try:
            while True:
                group.check_alive()
                time.sleep(1.0)
        except KeyboardInterrupt:
            console.print("stopping server")


def run_command(
    run_config: Annotated[
        Path | None, typer.Argument(help="The study's run config (TOML); not with --resume.")
    ] = None,
    superlink: Annotated[
        str,
        typer.Option(
            help="The SuperLink's Control API HOST:PORT (loopback on the server machine)."
        ),
    ] = f"127.0.0.1:{DEFAULT_CONTROL_PORT}",
    runs_dir: Annotated[
        Path | None,
        typer.Option(help="The server's runs folder, if visible from here: live progress table."),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the run until it ends.")] = True,
    ca: Annotated[
        Path, typer.Option(help="The consortium CA certificate, to verify the server.")
    ] = DEFAULT_SERVER_CERTS / CA_FILE,
    insecure: Annotated[bool, typer.Option("--insecure", help=_INSECURE_HELP)] = False,
    simulation: Annotated[
        Path | None,
        typer.Option(
            help="Simulate the sites whose configs are in this folder on Flower's simulation "
            "engine (needs the 'simulation' extra); no server needed."
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue this run folder (on the server's disk) from its last completed "
            "round, with the settings it started with."
        ),
    ] = None,
    baselines: Annotated[
        bool,
        typer.Option(
            help="With --simulation: also train the study pooled and at each training site "
            "alone, scored on the same held-out sites (results.json `baselines`, report)."
        ),
    ] = False,
) -> None:
    """Submit a study to a running server and follow it (or simulate it locally)."""
    _submit(
        _RunRequest(
            run_config=run_config,
            superlink=superlink,
            runs_dir=runs_dir,
            wait=wait,
            ca=ca,
            insecure=insecure,
            simulation=simulation,
            resume=resume,
            baselines=baselines,
        )
    )


@dataclass(frozen=True)
class _RunRequest:
    """The options of `consortia run` (see `run_command`)."""

    run_config: Path | None
    superlink: str
    runs_dir: Path | None
    wait: bool
    ca: Path
    insecure: bool
    simulation: Path | None
    resume: Path | None
    baselines: bool = False


@dataclass(frozen=True)
class _Study:
    """What to submit: the settings, the run's name, the Flower run to stop (a resumed run's
    crashed one) and the runs folder to follow it in."""

    settings: RunSettings
    run_name: str
    crashed_run: int | None
    runs_dir: Path | None


def _study(request: _RunRequest) -> _Study:
    """The study that `request` names: a run config, or a run folder to resume."""
    run_config, resume = request.run_config, request.resume
    if resume is not None and run_config is None:
        from consortia.server.run.state import resume_target  # loads torch: here, not on top

        target = resume_target(resume)
        study = _Study(
            settings=run_settings_from_json(target.settings_json),
            run_name=target.run_name,
            crashed_run=target.flower_run_id,
            runs_dir=request.runs_dir or resume.parent,
        )
        console.print(f"Resuming {target.run_name} after round {target.last_round}.")
        return study
    if run_config is not None and resume is None:
        settings = load_run_settings(run_config)
        run_name = f"{settings.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        return _Study(settings, run_name, None, request.runs_dir)
    raise typer.BadParameter("give a run config, or --resume RUN_DIR (not both)")


def _submit(request: _RunRequest) -> None:
    """Run `consortia run`: simulate the study, or submit it and follow it; the submission's
    working folder is removed when it ends (the app is uploaded at submission)."""
    study = _study(request)
    work = Path.home() / ".consortia" / "submissions" / f"{study.run_name}-{time.time_ns()}"
    try:
        _submit_study(request, study, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _submit_study(request: _RunRequest, study: _Study, work: Path) -> None:
    settings, run_name, runs_dir = study.settings, study.run_name, study.runs_dir
    if request.simulation is not None and request.resume is not None:
        raise typer.BadParameter("--resume runs on a server, not with --simulation")
    if request.baselines and request.simulation is None:
        raise typer.BadParameter("--baselines needs --simulation SITES_DIR")
    if request.simulation is not None:
        stop_on_sigterm()
        run_simulation(
            settings,
            run_name,
            request.simulation,
            runs_dir or Path("runs"),
            work,
            console,
            baselines=request.baselines,
        )
        return
    app_dir = write_app_dir(work / "app", settings, run_name, resume=request.resume is not None)
    ca = None if request.insecure else request.ca
    connection = SuperLinkConnection.of(request.superlink, work / "flwr", ca)
    if study.crashed_run is not None:
        with contextlib.suppress(ConsortiaError):  # the crashed run may be gone already
            stop_run(study.crashed_run, connection)
    run_id = submit_run(app_dir, connection)
    console.print(
        f"Submitted run [bold]{run_name}[/] (Flower run {run_id}) to {request.superlink}."
    )
    if not request.wait:
        console.print(f"The server writes its results to <runs dir>/{run_name}/")
        return
    run_dir = None if runs_dir is None else runs_dir / run_name
    try:
        if run_dir is None:
            stream_logs(run_id, connection)
        else:
            watch_run(run_id, connection, run_dir, settings.rounds, settings.task, console=console)
    except KeyboardInterrupt:
        if run_dir is None:
            stop_run(run_id, connection)  # watch_run stops it itself
            raise
        record = wait_until_ended(run_dir, 30.0)
        print_outcome(record, run_dir, console)
        raise


def demo_command(
    rounds: Annotated[
        int | None,
        typer.Option(min=1, help="Federated rounds [5; 8 for segmentation with --no-dp]."),
    ] = None,
    sites: Annotated[int, typer.Option(min=2, max=26, help="Sites; the last is held out.")] = 4,
    task: Annotated[Task, typer.Option(help="What to learn.")] = Task.SEGMENTATION,
    output: Annotated[Path, typer.Option(help="Folder for run folders.")] = Path("runs"),
    local_epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 1,
    image_size: Annotated[int, typer.Option(min=32, max=256, help="Image side (pixels).")] = 64,
    cases: Annotated[
        int | None,
        typer.Option(min=4, help="Training cases per site [960 segmentation, 320 classification]."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Local batch size.")] = 64,
    dp: Annotated[
        bool, typer.Option(help="DP-SGD at every site (--no-dp: plain training).")
    ] = True,
    epsilon: Annotated[
        float, typer.Option(min=0.1, help="Target epsilon per site for the run (with DP).")
    ] = 8.0,
    secure_aggregation: Annotated[
        bool,
        typer.Option(help="SecAgg+ from 3 training sites (--no-secure-aggregation: plain sums)."),
    ] = True,
) -> None:
    """A whole federation on this machine on synthetic data (SuperLink + SuperNodes)."""
    # Here, not at the top: the demo's report loads MONAI and matplotlib, which the other
    # `consortia` commands start without.
    from consortia.server.launch.demo import DemoOptions, default_rounds, run_demo

    stop_on_sigterm()
    # ResNet-18 steps cost more than the small U-Net's; classification learns with fewer.
    train_cases = cases or (960 if task is Task.SEGMENTATION else 320)
    options = DemoOptions(
        rounds=rounds or default_rounds(task, dp),
        sites=sites,
        task=task,
        output=output,
        local_epochs=local_epochs,
        image_size=image_size,
        train_cases=train_cases,
        test_cases=max(4, min(96, train_cases * 3 // 10)),
        batch_size=batch_size,
        dp=dp,
        target_epsilon=epsilon,
        secure_aggregation=secure_aggregation,
    )
    run_demo(options, console)


def plan_command(
    fingerprints: Annotated[
        list[Path], typer.Argument(help="The sites' `consortia data fingerprint` JSON files.")
    ],
    modality: Annotated[str, typer.Option(help="MR or CT.")] = "MR",
    divisor: Annotated[int, typer.Option(help="2 ** the model's strided levels.")] = 8,
    out: Annotated[Path | None, typer.Option(help="Write [run.plan] TOML here.")] = None,
) -> None:
    """Plan a segmentation study's preprocessing ([run.plan]) from the sites' fingerprints."""
    from pydantic import ValidationError

    from consortia.common.config.planner import (
        Fingerprint,
        merge_fingerprints,
        plan_from_fingerprint,
        plan_toml,
    )

    if modality not in ("MR", "CT"):
        raise typer.BadParameter("must be MR or CT", param_hint="--modality")
    prints = []
    for path in fingerprints:
        try:
            prints.append(Fingerprint.model_validate_json(path.read_text(encoding="utf-8")))
        except (OSError, ValidationError) as err:
            raise typer.BadParameter(f"{path}: not a fingerprint: {err}") from None
    try:
        plan = plan_from_fingerprint(
            merge_fingerprints(prints), modality="CT" if modality == "CT" else "MR", divisor=divisor
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    text = plan_toml(plan)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


def register(app: typer.Typer) -> None:
    """Entry point of the `consortia.cli` group."""
    app.add_typer(server_app, name="server")
    app.command("run")(run_command)
    app.command("demo")(demo_command)
    app.command("plan")(plan_command)
    app.command("report")(report_command)
    app.add_typer(audit_app, name="audit")
    app.add_typer(site_app, name="site")
    app.add_typer(runs_app, name="runs")
    app.add_typer(certs_app, name="certs")
    add_model_commands(app)  # `consortia model export`, beside the site's `model` commands
