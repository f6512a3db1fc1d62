"""Coordinator-side commands: `consortia server start`, `consortia run`, `consortia demo`."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console

from consortia.common.processes import ProcessGroup, stop_on_sigterm
from consortia.common.settings import Task, load_run_settings
from consortia.server.demo import DemoOptions, run_demo
from consortia.server.progress import final_table, follow_run
from consortia.server.run_folder import RESULTS_FILE
from consortia.server.submit import stop_run, submit_run, write_app_dir
from consortia.server.superlink import start_superlink

__all__ = ["register"]

server_app = typer.Typer(help="Run the coordinator's server (a Flower SuperLink).",
                         no_args_is_help=True)
console = Console()


@server_app.command("start")
def server_start(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(9092, help="Port of the SuperLink's Fleet/Control API."),
    state_dir: Path = typer.Option(Path.home() / ".consortia" / "server",
                                   help="SuperLink database, Flower home and logs."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders are written."),
    insecure: bool = typer.Option(True, help="Plain HTTP (TLS arrives with the PKI)."),
) -> None:
    """Start the SuperLink; runs until Ctrl-C."""
    stop_on_sigterm()
    with ProcessGroup() as group:
        start_superlink(group, state_dir, runs_dir, host=host, port=port, insecure=insecure)
        console.print(f"SuperLink listening on {host}:{port}; run folders in {runs_dir.resolve()}")
        try:
            while True:
                group.check_alive()
                time.sleep(1.0)
        except KeyboardInterrupt:
            console.print("stopping server")


def run_command(
    run_config: Path = typer.Argument(..., help="The study's run config (TOML)."),
    superlink: str = typer.Option("127.0.0.1:9092", help="SuperLink address HOST:PORT."),
    runs_dir: Path | None = typer.Option(
        None, help="The server's runs folder, when it is visible from here: live progress."
    ),
    wait: bool = typer.Option(True, help="Wait for the run to end."),
    insecure: bool = typer.Option(True, help="Plain HTTP (TLS arrives with the PKI)."),
) -> None:
    """Submit a study to a running server and follow it."""
    settings = load_run_settings(run_config)
    run_name = f"{settings.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    work = Path.home() / ".consortia" / "submissions" / run_name
    app_dir = write_app_dir(work / "app", settings, run_name)
    flwr_home = work / "flwr"
    run_id = submit_run(app_dir, superlink, flwr_home=flwr_home, insecure=insecure)
    console.print(f"Submitted run [bold]{run_name}[/] (Flower run {run_id}) to {superlink}.")
    if runs_dir is None or not wait:
        console.print("The server writes results to <server runs dir>/" + run_name)
        return
    try:
        follow_run(runs_dir / run_name, settings.rounds, settings.task, console=console)
    except KeyboardInterrupt:
        stop_run(run_id, superlink, flwr_home=flwr_home, insecure=insecure)
        raise
    results = json.loads((runs_dir / run_name / RESULTS_FILE).read_text(encoding="utf-8"))
    console.print(final_table(results))


def demo_command(
    rounds: int = typer.Option(5, min=1, help="Federated rounds."),
    sites: int = typer.Option(4, min=2, max=26, help="Sites; the last one is held out."),
    task: Task = typer.Option(Task.SEGMENTATION, help="segmentation or classification."),
    output: Path = typer.Option(Path("runs"), help="Folder for run folders."),
    local_epochs: int = typer.Option(2, min=1, help="Local epochs per round."),
) -> None:
    """A whole federation on this machine on synthetic data (SuperLink + SuperNodes)."""
    stop_on_sigterm()
    run_demo(DemoOptions(rounds=rounds, sites=sites, task=task, output=output,
                         local_epochs=local_epochs), console)


def register(app: typer.Typer) -> None:
    """Entry point of the `consortia.cli` group."""
    app.add_typer(server_app, name="server")
    app.command("run")(run_command)
    app.command("demo")(demo_command)
