"""Site-side commands: `consortia node ...`."""

from __future__ import annotations

import logging
import os
import re
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer

from consortia.client.data.cli import data_app
from consortia.client.node.approve_cli import approvals, approve, revoke
from consortia.client.node.audit import node_audit_for
from consortia.client.node.connection_check import check_server_connection
from consortia.client.node.ops_cli import node_check, node_status
from consortia.client.predict.cli import predict_command
from consortia.client.privacy.cli import privacy_app
from consortia.client.training.pretrain_cli import model_app
from consortia.common.audit.log import NODE_STARTED
from consortia.common.config.device_names import DEVICE_ENV, DEVICE_PATTERN
from consortia.common.config.settings import load_site_settings
from consortia.common.crypto.site_keys import load_site_private_key
from consortia.common.processes import stop_on_sigterm
from consortia.common.wire.run_identity import app_hash

__all__ = ["register"]

logger = logging.getLogger("consortia.client")

node_app = typer.Typer(help="Run a hospital's node beside its data.", no_args_is_help=True)


@node_app.command("start")
def node_start(
    site_config: Annotated[Path, typer.Option(help="The site's TOML config.")],
    runtime_port: Annotated[
        int | None,
        typer.Option(help="Local port of the SuperNode's Runtime API (overrides \\[node])."),
    ] = None,
    num_threads: Annotated[int | None, typer.Option(help="Torch threads per task.")] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="auto, cpu, cuda, cuda:N or mps (overrides \\[node] device).",
        ),
    ] = None,
) -> None:
    """Start this site's Flower SuperNode and executor; runs until Ctrl-C."""
    # Here, not at the top: the data readers and the node's executor load torch and MONAI,
    # which every other `consortia` command can start without.
    from consortia.client.data.dataset import SiteDataset
    from consortia.client.node.supernode import run_node

    site = load_site_settings(site_config)
    site.node.check_connection_files(str(site_config))
    if site.node.key is not None:
        load_site_private_key(site.node.key)  # a wrong key file stops the node here, clearly
    check_server_connection(
        site.node.superlink, None if site.node.insecure else site.node.root_certificates
    )
    for data in (site.data, *site.datasets.values()):
        # A broken manifest stops the node here, not at the first round.
        SiteDataset.open(data.path, cache_dir=site.cache_dir)
    if device is not None:
        if not re.fullmatch(DEVICE_PATTERN, device):
            raise typer.BadParameter("auto, cpu, cuda, cuda:N or mps", param_hint="--device")
        os.environ[DEVICE_ENV] = device  # the SuperNode's executor and tasks inherit it
    chosen = device or site.node.device
    logger.info("site %s trains on device %s", site.site.name, chosen)
    node_audit_for(site).append(
        NODE_STARTED, version=version("consortia"), app_hash=app_hash(), device=chosen
    )
    stop_on_sigterm()
    try:
        run_node(site, site_config, runtime_port=runtime_port, num_threads=num_threads)
    except KeyboardInterrupt:
        typer.echo("stopping node")


node_app.command("approve")(approve)
node_app.command("approvals")(approvals)
node_app.command("revoke")(revoke)
node_app.command("check")(node_check)
node_app.command("status")(node_status)


def register(app: typer.Typer) -> None:
    """Entry point of the `consortia.cli` group."""
    app.add_typer(node_app, name="node")
    app.add_typer(data_app, name="data")
    app.add_typer(privacy_app, name="privacy")
    app.add_typer(model_app, name="model")
    app.command("predict")(predict_command)
