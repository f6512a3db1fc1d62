"""The report's figures, drawn with matplotlib (headless Agg canvas) from
`report_data.build_report`'s data, one PNG per figure."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from consortia.common.files import write_atomic

__all__ = [
    "FIGURES_DIR",
    "FIGURE_EPSILON",
    "FIGURE_LEARNING_CURVES",
    "FIGURE_PARTICIPATION",
    "write_figures",
]

logger = logging.getLogger("consortia.server")

FIGURES_DIR: Final = "figures"
FIGURE_LEARNING_CURVES: Final = "learning-curves"
FIGURE_EPSILON: Final = "epsilon"
FIGURE_PARTICIPATION: Final = "participation"
_DPI: Final = 110


def _save(figure: Figure, path: Path) -> Path:
    """Render on an Agg canvas (no display, no global pyplot state), written atomically."""
    write_atomic(path, FigureCanvasAgg(figure).print_png)
    return path


def _learning_curves(curves: Mapping[str, Any]) -> Figure:
    figure = Figure(figsize=(9.0, 4.2), dpi=_DPI)
    axes = figure.add_subplot()
    rounds = curves["rounds"]
    for label, values in curves["series"].items():
        points = [(r, v) for r, v in zip(rounds, values, strict=True) if v is not None]
        if not points:
            continue
        pooled = "pooled" in label
        axes.plot(
            [r for r, _ in points],
            [v for _, v in points],
            marker="o",
            linewidth=2.6 if pooled else 1.2,
            linestyle="-" if pooled else "--",
            label=label,
        )
    axes.set_xlabel("round (0 = untrained model)")
    axes.set_ylabel(curves["metric"])
    axes.set_title(f"Global model's {curves['metric']} per site and round")
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return figure


def _epsilon(privacy: Mapping[str, Any]) -> Figure | None:
    sites = {name: site for name, site in privacy["sites"].items() if site["per_round"]}
    if not sites:
        return None
    figure = Figure(figsize=(9.0, 4.2), dpi=_DPI)
    axes = figure.add_subplot()
    limits: dict[float, list[str]] = {}
    for index, (name, site) in enumerate(sorted(sites.items())):
        rounds = [row["round"] for row in site["per_round"]]
        values = [row["epsilon"] for row in site["per_round"]]
        axes.plot(rounds, values, marker="o", color=f"C{index % 10}", label=f"{name} (total)")
        if site["limit"] is not None:
            limits.setdefault(site["limit"], []).append(name)
    for limit, names in limits.items():
        axes.axhline(limit, color="0.3", linestyle=":", linewidth=1.2)
        axes.annotate(
            f"limit {limit:g}: {', '.join(names)}",
            (0.01, limit),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(0, 3),
            fontsize="x-small",
            color="0.3",
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(bottom=0.0)
    axes.set_xlabel("round")
    axes.set_ylabel("epsilon spent on the data set (all runs)")
    axes.set_title("Privacy budget per site: spent (lines) against its limit (dotted)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return figure


def _participation(rows: list[Mapping[str, Any]]) -> Figure | None:
    if not rows:
        return None
    figure = Figure(figsize=(7.5, 3.6), dpi=_DPI)
    axes = figure.add_subplot()
    rounds = [row["round"] for row in rows]
    took_part = [len(row["participants"]) for row in rows]
    left_out = [len(row["left_out"]) for row in rows]
    offline = [len(row["not_connected"]) for row in rows]
    axes.bar(rounds, took_part, color="C2", label="aggregated")
    axes.bar(rounds, left_out, bottom=took_part, color="C3", label="left out")
    stacked = [a + b for a, b in zip(took_part, left_out, strict=True)]
    axes.bar(rounds, offline, bottom=stacked, color="C7", label="not connected")
    axes.set_xlabel("round")
    axes.set_ylabel("training sites")
    axes.set_xticks(rounds)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("Participants and dropouts per round")
    axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    return figure


def write_figures(report: Mapping[str, Any], folder: Path) -> dict[str, str]:
    """Draw every figure that has data into `folder`; name -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = {
        FIGURE_LEARNING_CURVES: _learning_curves(report["learning_curves"]),
        FIGURE_EPSILON: _epsilon(report["privacy"]),
        FIGURE_PARTICIPATION: _participation(report["participation"]),
    }
    written = {}
    for name, figure in figures.items():
        if figure is None:
            logger.info("report: no data for the %s figure", name)
            continue
        written[name] = _save(figure, folder / f"{name}.png").name
    return written
