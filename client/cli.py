"""Site-side commands: `consortia node ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from consortia.client.data.dataset import SiteDataset
from consortia.client.data_cli import data_app
from consortia.client.node import start_node_processes, supervise
from consortia.common.processes import ProcessGroup, stop_on_sigterm
from consortia.common.settings import load_site_settings

__all__ = ["register"]

node_app = typer.Typer(help="Run a hospital's node beside its data.", no_args_is_help=True)


@node_app.command("start")
def node_start(
    site_config: Annotated[Path, typer.Option(help="The site's TOML config.")],
    runtime_port: Annotated[
        int | None,
        typer.Option(help="Local port of the SuperNode's Runtime API (overrides [node])."),
    ] = None,
    num_threads: Annotated[int | None, typer.Option(help="Torch threads per task.")] = None,
) -> None:
    """Start this site's Flower SuperNode and executor; runs until Ctrl-C."""
    site = load_site_settings(site_config)
    for data in (site.data, *site.datasets.values()):
        # A broken manifest stops the node here, not at the first round.
        SiteDataset.open(data.path, cache_dir=site.cache_dir)
    stop_on_sigterm()
    with ProcessGroup() as group:
        start_node_processes(
            group, site, site_config, runtime_port=runtime_port, num_threads=num_threads
        )
        try:
            supervise(group)
        except KeyboardInterrupt:
            typer.echo("stopping node")


def register(app: typer.Typer) -> None:
    """Entry point of the `consortia.cli` group."""
    app.add_typer(node_app, name="node")
    app.add_typer(data_app, name="data")
