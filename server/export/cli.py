"""`consortia model export`: a study's global model as a standard artefact for the clinic.

Kept free of torch and MONAI at import time (`consortia --help` starts in about 1 s); the
export itself loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["add_model_commands", "model_app"]

model_app = typer.Typer(help="Export a study's global model.", no_args_is_help=True)
console = Console()


@model_app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="The run folder (runs/<name>).")],
    export_format: Annotated[
        str,
        typer.Option(
            "--format", help="monai-bundle, torchscript or onnx (onnx: the export extra)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="New folder for the exported model and its card.")],
    round_number: Annotated[
        int | None,
        typer.Option(
            "--round",
            min=0,
            help="Round whose model to export [the final model of a completed run].",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="A training site's data manifest: its [preprocess] and labels go into the "
            "card (needed while the run settings carry no plan).",
        ),
    ] = None,
) -> None:
    """Export the global model with its preprocessing, labels, provenance, privacy spent
    and held-out metrics (the card, consortia-model.json)."""
    from consortia.server.export.exporter import EXPORT_FORMATS, export_model

    if export_format not in EXPORT_FORMATS:
        raise typer.BadParameter(", ".join(EXPORT_FORMATS), param_hint="--format")
    # A ConsortiaError (a refused round, a bad manifest) ends the command with its message.
    result = export_model(
        run_dir,
        out,
        export_format,  # type: ignore[arg-type]
        round_number=round_number,
        manifest=manifest,
    )
    console.print(f"exported round {result.round} as {export_format} to {result.out}")
    if result.note:
        console.print(f"[yellow]note:[/yellow] {result.note}")
    if result.max_abs_diff is not None:
        console.print(f"largest difference to the checkpoint's outputs: {result.max_abs_diff:.2e}")


def add_model_commands(app: typer.Typer) -> None:
    """Put `model export` into the root app's `model` group: the site side registers
    `model pretrain` and `model hash` in a group of that name first (entry points load in
    name order, client before server), and two groups of one name would hide each other."""
    for group in app.registered_groups:
        if group.name == "model" and group.typer_instance is not None:
            group.typer_instance.command("export")(export_command)
            return
    app.add_typer(model_app, name="model")
