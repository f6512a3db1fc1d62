"""`consortia runs list|follow|stop|logs`: the server's studies as objects, by run folder name.

A run is named by its folder under the server's runs folder (`<study name>-<UTC time>`, as
`consortia run` names it); these commands run on the server machine, where that folder and
the SuperLink's Control API (loopback) are. `list` and `follow` read run folders only;
`stop` and `logs` also reach the SuperLink's Control API.
"""

from __future__ import annotations

import getpass
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from consortia.common.config.settings import Task
from consortia.common.errors import ConsortiaError
from consortia.server.control import SuperLinkConnection, request_stop, show_logs
from consortia.server.registry.server_security import CA_FILE, DEFAULT_SERVER_CERTS
from consortia.server.report.progress import final_table, follow_run, privacy_table
from consortia.server.run.folder import RESULTS_FILE, read_record
from consortia.server.run.record import RunRecord

__all__ = [
    "RUNNING",
    "STOPPED",
    "find_run",
    "flower_run_of",
    "print_outcome",
    "runs_app",
    "wait_until_ended",
]

runs_app = typer.Typer(
    help="The server's runs: list, follow, stop, logs (on the server machine).",
    no_args_is_help=True,
)
console = Console()

RUNNING = "running"
STOPPED = "stopped"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DEFAULT_CONTROL = "127.0.0.1:9093"

RunsDir = Annotated[
    Path, typer.Option(help="The server's runs folder (as for consortia server start).")
]
RunName = Annotated[str, typer.Argument(help="The run: its folder name (consortia runs list).")]
Superlink = Annotated[
    str, typer.Option(help="The SuperLink's Control API HOST:PORT (loopback on the server).")
]
CA = Annotated[Path, typer.Option(help="The consortium CA certificate, to verify the server.")]
Insecure = Annotated[bool, typer.Option("--insecure", help="A plain-HTTP (--insecure) server.")]


def find_run(runs_dir: Path, name: str) -> Path:
    """The folder of run `name` under `runs_dir`; `ConsortiaError` naming what is wrong."""
    if not runs_dir.is_dir():
        raise ConsortiaError(f"{runs_dir}: no runs folder here (--runs-dir)")
    if not _RUN_NAME.fullmatch(name):
        raise ConsortiaError(f"{name!r}: not a run name (a run folder's name, no path)")
    run_dir = runs_dir / name
    if not (run_dir / RESULTS_FILE).is_file():
        raise ConsortiaError(
            f"no run {name!r} in {runs_dir} (`consortia runs list --runs-dir {runs_dir}` "
            "lists them)"
        )
    return run_dir


def flower_run_of(record: RunRecord, run_dir: Path) -> int:
    """The Flower run id of the run's latest submission (its last resumption's, if any)."""
    latest = record.resumed[-1].flower_run_id if record.resumed else record.flower_run_id
    if latest is None:
        raise ConsortiaError(f"{run_dir / RESULTS_FILE}: no Flower run id in it")
    return latest


@contextmanager
def _connection(superlink: str, ca: Path, insecure: bool) -> Iterator[SuperLinkConnection]:
    """A connection with a private Flower home, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="consortia-runs-") as home:
        yield SuperLinkConnection.of(superlink, Path(home), None if insecure else ca)


def wait_until_ended(run_dir: Path, timeout_s: float) -> RunRecord:
    """The run's record once its status is no longer `running` (or at `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    record = read_record(run_dir)
    while record.status == RUNNING and time.monotonic() < deadline:
        time.sleep(0.5)
        record = read_record(run_dir)
    return record


def print_outcome(record: RunRecord, run_dir: Path, out: Console) -> None:
    """The run's final tables and how it ended (with the resume command if stopped)."""
    if record.rounds:
        out.print(final_table(record))
    privacy = privacy_table(record)
    if privacy is not None:
        out.print(privacy)
    if record.ended_early:
        out.print(f"[yellow]Training ended early:[/] {record.ended_early}")
    if record.status == STOPPED:
        reason = record.stopped.reason if record.stopped is not None else "no reason recorded"
        out.print(
            f"[yellow]Run {run_dir.name} stopped:[/] {reason}. Resume it with "
            f"`consortia run --resume {run_dir}`."
        )
    elif record.status == "failed":
        out.print(f"[red]Run {run_dir.name} failed:[/] {record.error}")
    else:
        out.print(f"Run {run_dir.name}: {record.status}.")


def _progress(record: RunRecord) -> str:
    done = max((entry.round for entry in record.rounds), default=0)
    planned = record.planned_rounds
    return f"{done}/{planned}" if planned is not None else str(done)


def _note(record: RunRecord) -> str:
    if record.status == STOPPED and record.stopped is not None:
        return record.stopped.reason
    return record.error or record.ended_early or ""


@runs_app.command("list")
def list_runs(runs_dir: RunsDir = Path("runs")) -> None:
    """Every run in the runs folder: status, rounds done, start, Flower run, why it ended."""
    if not runs_dir.is_dir():
        raise ConsortiaError(f"{runs_dir}: no runs folder here (--runs-dir)")
    table = Table(title=f"Runs in {runs_dir}")
    table.add_column("run", no_wrap=True)  # whole, to copy into `consortia runs follow`
    for column in ("status", "rounds", "started (UTC)", "Flower run", "note"):
        table.add_column(column)
    rows: list[tuple[str, ...]] = []
    for run_dir in sorted(path for path in runs_dir.iterdir() if path.is_dir()):
        if not (run_dir / RESULTS_FILE).is_file():
            continue
        try:
            record = read_record(run_dir)
        except ConsortiaError as err:
            rows.append((run_dir.name, "unreadable", "-", "-", "-", str(err)[-120:]))
            continue
        flower = record.resumed[-1].flower_run_id if record.resumed else record.flower_run_id
        started = (record.started_at or "-").replace("T", " ")[:19]
        status = record.status or "-"
        rows.append(
            (run_dir.name, status, _progress(record), started, str(flower or "-"), _note(record))
        )
    for row in sorted(rows, key=lambda row: row[3]):
        table.add_row(*row)
    console.print(table if rows else f"No runs in {runs_dir}.")


@runs_app.command("follow")
def follow(run: RunName, runs_dir: RunsDir = Path("runs")) -> None:
    """Re-attach to a run's live progress until it ends; Ctrl-C detaches (the run goes on)."""
    run_dir = find_run(runs_dir, run)
    record = read_record(run_dir)
    if record.status == RUNNING:
        rounds = record.planned_rounds or 0
        try:
            follow_run(run_dir, rounds, Task(str(record.task)), console=console)
        except KeyboardInterrupt:
            console.print(
                f"Detached from {run}; it goes on. `consortia runs follow {run}` re-attaches."
            )
            return
        except ConsortiaError:
            pass  # a failed run: its outcome is printed below
        record = wait_until_ended(run_dir, 30.0)
    print_outcome(record, run_dir, console)


@runs_app.command("stop")
def stop(
    run: RunName,
    reason: Annotated[str, typer.Option(help="Why the run is stopped (recorded).")] = (
        "consortia runs stop"
    ),
    by: Annotated[str | None, typer.Option(help="Who stops it [the user name].")] = None,
    runs_dir: RunsDir = Path("runs"),
    superlink: Superlink = _DEFAULT_CONTROL,
    ca: CA = DEFAULT_SERVER_CERTS / CA_FILE,
    insecure: Insecure = False,
    wait_s: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the server to record the stop.")
    ] = 60.0,
) -> None:
    """Stop a running run: results.json says `stopped`, who and why; it stays resumable."""
    run_dir = find_run(runs_dir, run)
    record = read_record(run_dir)
    if record.status != RUNNING:
        raise ConsortiaError(f"run {run} is not running (status {record.status}); nothing to stop")
    who = by or getpass.getuser()
    with _connection(superlink, ca, insecure) as connection:
        request_stop(
            flower_run_of(record, run_dir), connection, run_dir, f"stopped by {who} ({reason})"
        )
    record = wait_until_ended(run_dir, wait_s)
    if record.status == RUNNING:
        raise ConsortiaError(
            f"the SuperLink accepted the stop, but run {run} did not record it within "
            f"{wait_s:.0f} s; `consortia runs list` shows when it does"
        )
    print_outcome(record, run_dir, console)


@runs_app.command("logs")
def logs(
    run: RunName,
    follow_logs: Annotated[
        bool, typer.Option("--follow", "-f", help="Go on printing until the run ends.")
    ] = False,
    runs_dir: RunsDir = Path("runs"),
    superlink: Superlink = _DEFAULT_CONTROL,
    ca: CA = DEFAULT_SERVER_CERTS / CA_FILE,
    insecure: Insecure = False,
) -> None:
    """The ServerApp's log of a run, as the SuperLink keeps it (its latest submission)."""
    run_dir = find_run(runs_dir, run)
    flower_run = flower_run_of(read_record(run_dir), run_dir)
    with _connection(superlink, ca, insecure) as connection:
        code = show_logs(flower_run, connection, follow=follow_logs)
    if code != 0:
        raise ConsortiaError(
            f"the SuperLink at {superlink} gave no log of run {run} (Flower run {flower_run}); "
            f"the server's own log is {run_dir / 'server.log'}"
        )
