"""`consortia model pretrain | hash`: a study's warm start, trained on public data or
hashed from an existing checkpoint or MONAI bundle, for `[run.model.init]`.

Plain Typer commands on `model_app`; torch and MONAI are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from consortia.common.config.settings import load_run_settings

__all__ = ["model_app"]

model_app = typer.Typer(
    help="A study's starting weights (\\[run.model.init]): pretrain on public data, hash.",
    no_args_is_help=True,
)

_RUN_HELP = "The study's run config (TOML): its \\[run.model] and \\[run.training]."


def _snippet(path: Path, sha256: str) -> str:
    return f'[run.model.init]\npath = "{path.as_posix()}"\nsha256 = "{sha256}"'


@model_app.command("pretrain")
def pretrain_command(
    run_config: Annotated[Path, typer.Argument(help=_RUN_HELP)],
    data: Annotated[Path, typer.Option(help="The PUBLIC data set (manifest or npz).")],
    out: Annotated[Path, typer.Option(help="The checkpoint to write (.pt).")],
    epochs: Annotated[int, typer.Option(min=1, max=10_000, help="Training epochs.")] = 20,
    evaluate: Annotated[
        Path | None,
        typer.Option(help="Also score the result on every case of this data set."),
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache of preprocessed arrays (default: none).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    write_run_config: Annotated[
        Path | None,
        typer.Option(help="Also write this run config: RUN_CONFIG plus \\[run.model.init]."),
    ] = None,
) -> None:
    """Train the run's model on public data; write the checkpoint and OUT.json (its
    weights' SHA-256, the data's fingerprint); print the \\[run.model.init] table."""
    from consortia.client.training.pretrain import pretrain, warm_run_config
    from consortia.common.networks.device import select_device

    settings = load_run_settings(run_config)
    done = pretrain(
        settings,
        data,
        out,
        epochs=epochs,
        device=select_device(device),
        cache_dir=cache_dir,
        evaluate=evaluate,
    )
    console = Console()
    console.print(
        f"Trained on {done.cases} cases of {escape(done.data)} for {done.epochs} epochs "
        f"({done.train_s:.0f} s, mean loss {done.mean_loss:.4f}); wrote {escape(str(out))}.",
        soft_wrap=True,
    )
    if done.evaluation:
        scores = ", ".join(
            f"{k} {v:.4f}" for k, v in done.evaluation.items() if isinstance(v, float)
        )
        console.print(f"On {escape(str(done.evaluation['data']))}: {scores}", soft_wrap=True)
    if write_run_config is not None:
        warm_run_config(run_config, out, done.sha256, write_run_config)
        console.print(f"Wrote {escape(str(write_run_config))}.", soft_wrap=True)
    console.print(escape(_snippet(out, done.sha256)), soft_wrap=True)


@model_app.command("hash")
def hash_command(
    run_config: Annotated[Path, typer.Argument(help=_RUN_HELP)],
    weights: Annotated[Path, typer.Argument(help="A state-dict .pt or a MONAI bundle folder.")],
) -> None:
    """Check that a checkpoint fits the run's model; print its `model.init.sha256`."""
    from consortia.common.networks.warm_start import fit_weights, layout_of, read_weights
    from consortia.common.networks.warm_start import weights_sha256 as digest

    settings = load_run_settings(run_config)
    state, _ = read_weights(weights, str(weights))
    layout = layout_of(settings.model.to_model_settings())
    vector = fit_weights(state, layout, str(weights))
    Console().print(escape(_snippet(weights, digest(vector))), soft_wrap=True)
