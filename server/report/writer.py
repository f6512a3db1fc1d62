"""A run's report written from its folder: `report.html`, `figures/*.png` and, when
asked, `report.json` (`consortia report` and the demo call `write_report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from consortia.common.files import write_json_atomic, write_text_atomic
from consortia.server.report.data import build_report
from consortia.server.report.figures import FIGURES_DIR, write_figures
from consortia.server.report.page import render_html

__all__ = ["REPORT_DIR", "REPORT_HTML", "REPORT_JSON", "write_report"]

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
