"""`consortia report RUN_DIR`: the run's HTML report, its figures as PNG, the same data
as JSON, and optionally TensorBoard event files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console

from consortia.common.files import write_json_atomic, write_text_atomic
from consortia.server.report_data import build_report, load_results
from consortia.server.report_figures import FIGURES_DIR, write_figures
from consortia.server.report_html import render_html
from consortia.server.tensorboard_log import export_run

__all__ = ["REPORT_DIR", "REPORT_HTML", "REPORT_JSON", "report_command", "write_report"]

logger = logging.getLogger("consortia.server")
console = Console()

REPORT_DIR: Final = "report"
REPORT_HTML: Final = "report.html"
REPORT_JSON: Final = "report.json"


def write_report(run_dir: Path, out: Path, *, json_copy: bool = False) -> dict[str, Any]:
    """Write `report.html`, `figures/*.png` and, with `json_copy`, `report.json` into
    `out`; returns the report's data (with the figure files under `figures`)."""
    report = build_report(run_dir)
    figures_dir = out / FIGURES_DIR
    written = write_figures(report, figures_dir)
    report["figures"] = {name: f"{FIGURES_DIR}/{file}" for name, file in written.items()}
    html = render_html(
        report, {name: figures_dir / file for name, file in written.items()}, run_dir
    )
    write_text_atomic(out / REPORT_HTML, html)
    if json_copy:
        write_json_atomic(out / REPORT_JSON, report)
    return report


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
