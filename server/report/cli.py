"""`consortia report RUN_DIR`: the run's HTML report, its figures as PNG, the same data
as JSON, and optionally TensorBoard event files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["report_command"]

console = Console()


def report_command(
    run_dir: Annotated[
        Path,
        typer.Argument(help="A run folder (holds results.json).", exists=True, file_okay=False),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Where to write the report \\[RUN_DIR/report].")
    ] = None,
    json_copy: Annotated[
        bool, typer.Option("--json", help="Also write report.json: the same data as JSON.")
    ] = False,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            help="Also export every metric of every round as TensorBoard event files here "
            "(an empty folder; needs the 'tensorboard' extra)."
        ),
    ] = None,
) -> None:
    """Write the run's report: a self-contained HTML page with learning curves, a
    cross-site table with 95% bootstrap intervals, privacy spent per site and round,
    participants and dropouts, settings and provenance hashes."""
    # Here, not at the top: building the report loads MONAI's metrics and matplotlib,
    # which the other `consortia` commands start without.
    from consortia.server.report.data import load_results
    from consortia.server.report.tensorboard_log import export_run
    from consortia.server.report.writer import REPORT_DIR, REPORT_HTML, REPORT_JSON, write_report

    target = out or run_dir / REPORT_DIR
    target.mkdir(parents=True, exist_ok=True)
    report = write_report(run_dir, target, json_copy=json_copy)
    console.print(f"Report: {target / REPORT_HTML}")
    for file in report["figures"].values():
        console.print(f"Figure: {target / file}")
    if json_copy:
        console.print(f"Data: {target / REPORT_JSON}")
    if tensorboard is not None:
        rounds = export_run(load_results(run_dir), tensorboard)
        console.print(f"TensorBoard: {rounds} rounds in {tensorboard}")
