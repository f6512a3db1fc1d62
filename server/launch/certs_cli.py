"""The consortium's keys and certificates: `consortia certs init | server | site`.

- `init` (once, by the coordinator, ideally on an offline machine): the consortium CA.
- `server`: the server's TLS certificate for its host names, signed by the CA.
- `site NAME` (at each hospital): the site's key pair; the public half goes to the
  coordinator (`consortia site register NAME.pub`), the private half stays at the site.

Nothing is overwritten without `--force`. The CA key may be encrypted (`init --encrypt`);
its passphrase is then read from `$CONSORTIA_CA_PASSPHRASE` or asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from consortia.common.crypto.pki import (
    ca_key_is_encrypted,
    create_ca,
    create_site_key,
    issue_server_certificate,
)

__all__ = ["PASSPHRASE_ENV", "certs_app", "init_command", "server_command", "site_command"]

PASSPHRASE_ENV = "CONSORTIA_CA_PASSPHRASE"

certs_app = typer.Typer(
    help="Create the consortium CA, the server's TLS certificate and site key pairs.",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)  # commands and paths stay whole for copying

_FORCE_HELP = "Replace existing key/certificate files (the old ones are lost)."
_DEFAULT_CA_DIR = Path("consortia-pki/ca")
#: Always in the server certificate: the Control API and the ServerApps use loopback.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def _passphrase(*, confirm: bool) -> bytes:
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env.encode("utf-8")
    text: str = typer.prompt("CA key passphrase", hide_input=True, confirmation_prompt=confirm)
    return text.encode("utf-8")


def _path(path: Path) -> str:
    return escape(str(path))


@certs_app.command("init")
def init_command(
    directory: Annotated[
        Path, typer.Option("--dir", help="Folder for ca.key and ca.pem.")
    ] = _DEFAULT_CA_DIR,
    name: Annotated[str, typer.Option(help="The CA's name in its certificate.")] = "Consortia CA",
    days: Annotated[int, typer.Option(help="Validity of the CA certificate.")] = 3650,
    encrypt: Annotated[
        bool, typer.Option(help=f"Encrypt ca.key with a passphrase (or ${PASSPHRASE_ENV}).")
    ] = False,
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Create the consortium's certificate authority."""
    passphrase = _passphrase(confirm=True) if encrypt else None
    files = create_ca(directory, name=name, days=days, passphrase=passphrase, force=force)
    console.print(
        f"CA certificate: [bold]{_path(files.certificate)}[/] (public: every site gets it)"
    )
    console.print(
        f"CA private key: [bold]{_path(files.key)}[/] (mode 600). Keep it private, "
        "offline if you can, and backed up: whoever has it can impersonate the server."
    )
    console.print(
        f"Next: consortia certs server --ca-dir {_path(directory)} --host <server name or IP>"
    )


@certs_app.command("server")
def server_command(
    host: Annotated[
        list[str] | None,
        typer.Option(help="A DNS name or IP address of the server (repeat for several)."),
    ] = None,
    ca_dir: Annotated[Path, typer.Option(help="The CA folder (certs init).")] = _DEFAULT_CA_DIR,
    out: Annotated[Path, typer.Option(help="Folder for server.key, server.pem and ca.pem.")] = Path(
        "consortia-pki/server"
    ),
    days: Annotated[int, typer.Option(help="Validity of the certificate.")] = 825,
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Issue the server's TLS certificate for --host names, plus 127.0.0.1 and localhost
    (the loopback Control API and the server's own ServerApp processes use those)."""
    hosts = list(dict.fromkeys([*(host or []), *LOOPBACK_HOSTS]))
    passphrase = _passphrase(confirm=False) if ca_key_is_encrypted(ca_dir) else None
    files = issue_server_certificate(
        ca_dir, out, hosts, days=days, ca_passphrase=passphrase, force=force
    )
    console.print(f"Server certificate for {escape(', '.join(hosts))}: {_path(files.certificate)}")
    console.print(f"Server private key: {_path(files.key)} (mode 600; stays on the server)")
    console.print(f"CA certificate for the sites: {_path(files.ca_certificate)}")
    console.print(f"Start the server: consortia server start --certs {_path(out)}")


@certs_app.command("site")
def site_command(
    name: Annotated[str, typer.Argument(help="The site's name (as in its site config).")],
    out: Annotated[Path, typer.Option(help="Folder for NAME.key and NAME.pub.")] = Path(
        "consortia-pki/site"
    ),
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Create a site's key pair (at the hospital)."""
    files = create_site_key(out, name, force=force)
    console.print(
        f"Site private key: [bold]{_path(files.private_key)}[/] (mode 600). It stays here: "
        "the node signs with it and Flower authenticates the node with it."
    )
    console.print(f"Site public key: [bold]{_path(files.public_key)}[/]")
    console.print(f"Fingerprint: {files.fingerprint}")
    console.print(
        f"Next: send {_path(files.public_key)} to the coordinator, who runs "
        f"`consortia site register {escape(files.public_key.name)}`; compare the "
        "fingerprint with theirs by phone."
    )
