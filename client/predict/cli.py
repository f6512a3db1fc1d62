"""`consortia predict`: apply an exported global model to a site's images.

Kept free of torch and MONAI at import time (`consortia --help` starts in about 1 s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from consortia.common.errors import ConfigError

__all__ = ["predict_command"]

console = Console(stderr=True)


def predict_command(
    model: Annotated[Path, typer.Argument(help="The folder `consortia model export` wrote.")],
    images: Annotated[
        list[Path],
        typer.Argument(help="Images: NIfTI, PNG, DICOM files or folders of one series each."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for the masks or scores.csv.")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
) -> None:
    """Segment or classify images with an exported model, preprocessed as in training;
    masks on each input's grid (NIfTI, and DICOM SEG for DICOM input) or class scores."""
    from consortia.client.predict.batch import predict_images
    from consortia.client.predict.exported import ExportedModel
    from consortia.common.networks.device import select_device

    try:
        chosen = select_device(device)
    except ConfigError as err:  # it names the node's setting; here the option is meant
        raise ConfigError(f"--device {device}: {str(err).split(': ', 1)[-1]}") from None
    exported = ExportedModel.load(model, chosen)
    columns = (
        TextColumn("predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("predict", total=len(images))
        report = predict_images(exported, images, out, advance=lambda _: progress.advance(task))
    for path, reason in report.failed.items():
        console.print(f"[red]error:[/red] {path}: {reason}", highlight=False)
    done = len(images) - len(report.failed)
    console.print(
        f"{done} of {len(images)} image(s) predicted; wrote {len(report.written)} file(s) to {out}"
    )
    if report.failed:
        raise typer.Exit(1)
