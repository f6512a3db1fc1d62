"""`consortia data ...`: check a data set the way training reads it, and write a
de-identified copy of DICOM files. The lead wires `data_app` into the root CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:  # the readers (MONAI, torch, pydicom) load when a command runs
    from consortia.client.data.check import CheckReport
    from consortia.client.data.dicom.deidentify import DeidentifyReport

__all__ = ["data_app"]

data_app = typer.Typer(
    help="Check a site's data sets and write de-identified copies.", no_args_is_help=True
)


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (only on a terminal); yields an on_item(done, total)."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda done, total: None
        return
    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield advance


def _fmt_range(values: tuple[list[float], list[float]] | None, digits: int = 0) -> str:
    if values is None:
        return "-"
    low, high = values

    def text(items: list[float]) -> str:
        return " x ".join(f"{v:.{digits}f}" for v in items)

    return text(low) if low == high else f"{text(low)} .. {text(high)}"


def _counts(items: dict[str, int]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in items.items()) or "-"


def _print_cases(console: Console, report: CheckReport, only_problems: bool) -> None:
    if only_problems and all(case.ok and not case.phi_findings for case in report.cases):
        console.print(f"all {len(report.cases)} case(s) of {report.dataset} read without problems")
        return
    table = Table(title=f"Cases of {report.dataset}", show_lines=False)
    for column in ("case", "split", "result", "file", "size", "labels", "PHI"):
        table.add_column(column, overflow="fold")
    for case in report.cases:
        if only_problems and case.ok and not case.phi_findings:
            continue
        result = "[green]OK[/]" if case.ok else f"[red]{case.problem}[/]"
        size = " x ".join(str(n) for n in case.shape) if case.shape else "-"
        labels = ", ".join(str(v) for v in case.labels[:8]) or "-"
        phi = f"[red]{case.phi_findings}[/]" if case.phi_findings else "-"
        table.add_row(case.id, case.split or "-", result, case.file or "", size, labels, phi)
    console.print(table)


def _print_summary(console: Console, report: CheckReport) -> None:
    s = report.summary
    table = Table(title="Summary", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("data set", f"{report.dataset} ({report.task or 'no task: images only'})")
    if report.fingerprint:
        table.add_row("fingerprint", report.fingerprint)
    table.add_row("cases", f"{s.passed} OK, {s.failed} left out, {s.cases} in all")
    table.add_row("per split", _counts(s.per_split))
    for split, labels in s.per_label.items():
        table.add_row(f"labels ({split})", _counts(labels))
    table.add_row("image size", _fmt_range(s.shape_range))
    table.add_row("spacing (mm)", _fmt_range(s.spacing_range, 3))
    if s.intensity:
        i = s.intensity
        table.add_row(
            "intensity",
            f"min {i['min']:.4g}, max {i['max']:.4g}, mean {i['mean']:.4g}, std {i['std']:.4g}",
        )
    table.add_row("channels", _counts(s.channels))
    table.add_row("modality", _counts(s.modalities))
    table.add_row("manufacturer", _counts(s.manufacturers))
    phi = f"{s.phi_files} case(s) with identifying attributes" if s.phi_files else "none found"
    table.add_row("PHI", phi)
    for where, count in s.phi.items():
        table.add_row("", f"{where}: {count}")
    console.print(table)
    if report.usable:
        console.print("[green]usable[/]: training will use the cases marked OK")
    else:
        for reason in report.reasons:
            console.print(f"[red]not usable[/]: {reason}")


@data_app.command("check")
def check(
    path: Annotated[
        Path,
        typer.Argument(help="A data set manifest (.toml), a MedMNIST npz, or a DICOM folder."),
    ],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Site cache folder (remembers file hashes).")
    ] = None,
    only_problems: Annotated[
        bool, typer.Option("--only-problems", help="List only cases with a problem.")
    ] = False,
) -> None:
    """Read every case the way training will; exit 0 if usable, 1 if not, 2 on a bad
    manifest."""
    from consortia.client.data.dataset import SiteDataset
    from consortia.client.data.dicom.folder_check import check_dicom_folder

    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist", param_hint="PATH")
    with _progress("reading cases", enabled=not json_output) as on_case:
        if path.is_dir():
            report = check_dicom_folder(path, on_case=on_case)
        else:
            report = SiteDataset.open(path, cache_dir=cache_dir).check(on_case=on_case)
    if json_output:
        typer.echo(report.to_json())
    else:
        console = Console()
        _print_cases(console, report, only_problems)
        _print_summary(console, report)
    raise typer.Exit(0 if report.usable else 1)


def _count_table(title: str, column: str, counts: dict[str, int]) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column(column)
    table.add_column("count", justify="right")
    for name, count in counts.items():
        table.add_row(name, str(count))
    return table


def _print_deidentify(console: Console, report: DeidentifyReport, dst: Path) -> None:
    console.print(f"wrote {report.files_written} de-identified file(s) to {dst}")
    console.print(_count_table("Changes per action", "action", report.changes))
    if report.per_keyword:
        console.print(_count_table("Changes per attribute", "attribute", report.per_keyword))
    if report.problems:
        problems = Table(title="Files left out", show_header=True)
        problems.add_column("file", overflow="fold")
        problems.add_column("reason", overflow="fold")
        for problem in report.problems:
            problems.add_row(problem.path, problem.reason)
        console.print(problems)


@data_app.command("deidentify")
def deidentify(
    src: Annotated[Path, typer.Argument(help="Folder of DICOM files (never modified).")],
    dst: Annotated[Path, typer.Argument(help="New folder for the de-identified copy.")],
) -> None:
    """Write a de-identified copy of SRC into DST and report what changed (counts only)."""
    from consortia.client.data.dicom.deidentify import deidentify_tree

    if not src.is_dir():
        raise typer.BadParameter(f"{src} is not a folder", param_hint="SRC")
    with _progress("de-identifying", enabled=True) as on_file:
        report = deidentify_tree(src, dst, on_file=on_file)
    console = Console()
    _print_deidentify(console, report, dst)
    if report.files_written:
        console.print(
            "Register the copy: point the manifest's image paths at it, then run "
            "`consortia data check` on the manifest."
        )
    # Every file left out is one the hospital must look at: say so in the exit code.
    raise typer.Exit(0 if report.files_written and not report.problems else 1)
