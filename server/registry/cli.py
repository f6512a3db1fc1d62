"""`consortia site register|list|unregister`: the coordinator's register of sites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from consortia.common.errors import ConsortiaError
from consortia.common.processes import wait_for_address
from consortia.server.control import SuperLinkConnection, node_status
from consortia.server.registry.server_security import CA_FILE, DEFAULT_SERVER_CERTS, registry_dir
from consortia.server.registry.site_admin import register_site, unregister_site
from consortia.server.registry.site_registry import SiteRegistry, site_name_from_public_key

__all__ = ["site_app"]

site_app = typer.Typer(
    help="Register hospitals' public keys with this server.", no_args_is_help=True
)
console = Console()

_DEFAULT_STATE = Path.home() / ".consortia" / "server"
# The SuperLink's database in the state folder (consortia server start).
SUPERLINK_DATABASE = "superlink.db"
StateDir = Annotated[
    Path, typer.Option(help="The server's state folder (as for consortia server start).")
]
Superlink = Annotated[
    str,
    typer.Option(help="The running SuperLink's Control API, HOST:PORT (loopback on the server)."),
]
CA = Annotated[Path, typer.Option(help="The consortium CA certificate.")]


def _connection(superlink: str, state_dir: Path, ca: Path) -> SuperLinkConnection:
    return SuperLinkConnection.of(superlink, state_dir / "flwr-admin", ca)


@site_app.command("register")
def register(
    public_key: Annotated[Path, typer.Argument(help="The site's NAME.pub (consortia certs site).")],
    name: Annotated[
        str | None, typer.Option(help="Site name \\[from the key's comment or file name].")
    ] = None,
    superlink: Superlink = "127.0.0.1:9093",
    state_dir: StateDir = _DEFAULT_STATE,
    ca: CA = DEFAULT_SERVER_CERTS / CA_FILE,
    replace: Annotated[bool, typer.Option(help="Replace the site's registered key.")] = False,
) -> None:
    """Register a site's public key: its node may connect, its signatures verify."""
    site = name or site_name_from_public_key(public_key)
    entry = register_site(
        SiteRegistry(registry_dir(state_dir)),
        _connection(superlink, state_dir, ca),
        public_key,
        site,
        replace=replace,
    )
    console.print(
        f"Site [bold]{entry.name}[/] registered: key {entry.fingerprint}, "
        f"node id {entry.flower_node_id}."
    )


def _node_status(
    superlink: str, state_dir: Path, ca: Path | None
) -> dict[int, tuple[str, str | None]] | None:
    """The SuperLink's node list, or None (with a warning) when it cannot be reached."""
    try:
        wait_for_address(superlink, 2.0)
        connection = SuperLinkConnection.of(superlink, state_dir / "flwr-admin", ca)
        return node_status(connection)
    except ConsortiaError as err:
        console.print(f"[yellow]Online status unknown:[/] {err}")
        return None


def _online(
    status: dict[int, tuple[str, str | None]] | None, node_id: int | None
) -> tuple[str, str]:
    if status is None:
        return "?", "?"
    if node_id is None or node_id not in status:
        return "not on the SuperLink", "-"
    state, seen = status[node_id]
    return state, (seen or "never").replace("T", " ").removesuffix("Z")[:19]


@site_app.command("list")
def list_sites(
    state_dir: StateDir = _DEFAULT_STATE,
    superlink: Superlink = "127.0.0.1:9093",
    ca: CA = DEFAULT_SERVER_CERTS / CA_FILE,
    insecure: Annotated[bool, typer.Option("--insecure", help="A plain-HTTP server.")] = False,
    online: Annotated[
        bool, typer.Option(help="Ask the running SuperLink which nodes are online.")
    ] = True,
) -> None:
    """The registered sites, with whether their node is online (and since / last seen)."""
    if not state_dir.is_dir() or not (
        registry_dir(state_dir).is_dir() or (state_dir / SUPERLINK_DATABASE).is_file()
    ):
        console.print(
            f"[red]{state_dir}: not a server state folder (no sites/ or {SUPERLINK_DATABASE});"
            " give the --state-dir of consortia server start[/]"
        )
        raise typer.Exit(1)
    status = _node_status(superlink, state_dir, None if insecure else ca) if online else None
    table = Table(
        "site", "key fingerprint", "node id", "registered (UTC)", "node", "since / last seen (UTC)"
    )
    for entry in SiteRegistry(registry_dir(state_dir)).sites():
        table.add_row(
            entry.name,
            entry.fingerprint,
            str(entry.flower_node_id or "-"),
            entry.registered_at.isoformat(timespec="seconds"),
            *_online(status, entry.flower_node_id),
        )
    console.print(table)


@site_app.command("unregister")
def unregister(
    name: Annotated[str, typer.Argument(help="The site to remove.")],
    superlink: Superlink = "127.0.0.1:9093",
    state_dir: StateDir = _DEFAULT_STATE,
    ca: CA = DEFAULT_SERVER_CERTS / CA_FILE,
) -> None:
    """Remove a site: its node can no longer connect, its updates are refused."""
    entry = unregister_site(
        SiteRegistry(registry_dir(state_dir)), _connection(superlink, state_dir, ca), name
    )
    console.print(f"Site [bold]{entry.name}[/] unregistered.")
