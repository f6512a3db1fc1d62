"""`consortia data ...`: describe a data set as a manifest (`init`), check it the way
training reads it, and write a de-identified copy of DICOM files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
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
    from consortia.client.data.check import shown_problem

    if only_problems and all(case.ok and not case.phi_findings for case in report.cases):
        console.print(f"all {len(report.cases)} case(s) of {report.dataset} read without problems")
        return
    table = Table(title=f"Cases of {report.dataset}", show_lines=False)
    columns = ["case", "split", "result", "file", "size", "labels", "PHI"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for case in report.cases:
        if only_problems and case.ok and not case.phi_findings:
            continue
        problem = shown_problem(case)
        result = "[green]OK[/]" if problem is None else f"[red]NOT OK: {escape(problem)}[/]"
        size = " x ".join(str(n) for n in case.shape) if case.shape else "-"
        labels = ", ".join(str(v) for v in case.labels[:8]) or "-"
        phi = f"[red]{case.phi_findings}[/]" if case.phi_findings else "-"
        file = escape(case.file or "")
        table.add_row(escape(case.id), case.split or "-", result, file, size, labels, phi)
    console.print(table)


def _print_summary(console: Console, report: CheckReport) -> None:
    s = report.summary
    table = Table(title="Summary", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("data set", f"{report.dataset} ({report.task or 'no task: images only'})")
    if report.fingerprint:
        table.add_row("fingerprint", report.fingerprint)
    with_phi = sum(1 for case in report.cases if case.ok and case.phi_findings)
    phi_note = f", {with_phi} not OK for PHI" if with_phi else ""
    table.add_row(
        "cases", f"{s.passed - with_phi} OK{phi_note}, {s.failed} left out, {s.cases} in all"
    )
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
    show_paths: Annotated[
        bool,
        typer.Option("--show-paths", help="Show file paths (default: ids and file names only)."),
    ] = False,
    run: Annotated[
        Path | None,
        typer.Option(help="A run config (RUN.toml): check the cases under its [run.plan]."),
    ] = None,
) -> None:
    """Read every case the way training will; exit 0 if usable, 1 if not, 2 on a bad
    manifest."""
    from consortia.client.data.dataset import SiteDataset
    from consortia.client.data.dicom.folder_check import check_dicom_folder
    from consortia.common.config.settings import load_run_settings

    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist", param_hint="PATH")
    with _progress("reading cases", enabled=not json_output) as on_case:
        if path.is_dir():
            report = check_dicom_folder(path, on_case=on_case)
        else:
            plan = None if run is None else load_run_settings(run).plan
            dataset = SiteDataset.open(path, cache_dir=cache_dir, plan=plan)
            report = dataset.check(on_case=on_case)
    if not show_paths:
        report = report.without_paths()
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


@data_app.command("fingerprint")
def fingerprint(
    path: Annotated[Path, typer.Argument(help="A data set manifest (.toml).")],
    out: Annotated[
        Path | None, typer.Option(help="Write the JSON here (default: print it).")
    ] = None,
    orientation: Annotated[str, typer.Option(help="Axis codes of the plan.")] = "RAS",
) -> None:
    """Aggregate statistics of a data set for `consortia plan` (spacing, sizes, foreground
    intensities): no paths, no file names, no per-case values."""
    from consortia.client.data.fingerprint import dataset_fingerprint

    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint="PATH")
    with _progress("reading cases", enabled=out is not None) as on_case:
        result = dataset_fingerprint(path, orientation=orientation, on_case=on_case)
    text = result.model_dump_json(indent=1)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")


@data_app.command("init")
def init(
    src: Annotated[
        Path,
        typer.Argument(help="A DICOM export, NIfTI folder, MSD, nnU-Net v2 raw or BIDS folder."),
    ],
    out: Annotated[Path, typer.Option("--out", help="The manifest to write (.toml).")],
    layout: Annotated[
        str | None,
        typer.Option(help="nnunet, msd, bids, nifti or dicom (default: detected)."),
    ] = None,
    hashed_ids: Annotated[
        bool,
        typer.Option(
            "--hashed-ids", help="Case ids from a hash of the path (folders name patients)."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing manifest.")] = False,
) -> None:
    """Describe SRC as a commented manifest; exit 0 when every file was used, 1 when some
    were left out (each is listed, and named in the manifest), 2 when nothing could be."""
    from consortia.client.data.importers.draft import write_manifest
    from consortia.client.data.importers.scanner import LAYOUTS, import_source

    if layout is not None and layout not in LAYOUTS:
        raise typer.BadParameter(f"one of {', '.join(LAYOUTS)}", param_hint="--layout")
    stack_dir = out.resolve().parent / f"{out.stem}-channels"
    chosen = next((name for name in LAYOUTS if name == layout), None)
    draft = import_source(src, layout=chosen, stack_dir=stack_dir, hashed_ids=hashed_ids)
    written = write_manifest(draft, out, overwrite=force)
    console = Console()
    console.print(
        f"wrote {escape(str(written))}: {len(draft.cases)} case(s) from a {draft.layout}",
        soft_wrap=True,
    )
    for note in draft.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)
    for problem in draft.problems:
        console.print(
            f"[red]left out[/]: {escape(problem.path)}: {escape(problem.reason)}", soft_wrap=True
        )
    console.print(f"Next: consortia data check {escape(str(out))}", soft_wrap=True)
    raise typer.Exit(1 if draft.problems else 0)
