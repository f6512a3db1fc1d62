"""`consortia node check | status`: a dry run of a node, and where it stands.

`check` goes through what `node start` needs, without starting anything: the site
config, the key (and, with `--run`, that it is the key the study's roster registered),
the consortium CA, a TLS handshake with the SuperLink (`connection_check`), every data
set's manifest, a full read of every case (which warms the cache), the approvals and the
device. Each line says OK or the problem; the exit code is 0 only when all are OK.
`status` says whether the server answers, lists the approvals and, per data set, the
epsilon spent and left from its privacy ledger. Neither prints a patient's path: data
problems are counted per data set (`consortia data check` names the cases).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from consortia.client.node.connection_check import check_server_connection
from consortia.common.audit.approvals import ApprovalStore
from consortia.common.config.settings import SiteSettings, load_run_settings, load_site_settings
from consortia.common.errors import ConsortiaError

__all__ = ["node_check", "node_status"]

_SITE_HELP = "The site's TOML config."
Step = Callable[[], str]


def _key(site: SiteSettings, run_config: Path | None) -> str:
    from consortia.common.config.roster import own_entry_refusal, site_fingerprint
    from consortia.common.crypto.site_keys import load_site_private_key

    if site.node.key is None:
        return "no key (node.insecure)"
    load_site_private_key(site.node.key)
    fingerprint = site_fingerprint(site.node.key)
    if run_config is not None:
        settings = load_run_settings(run_config)
        refusal = own_entry_refusal(settings, site.site.name, site.site.role, fingerprint)
        if refusal is not None:
            raise ConsortiaError(f"key not registered for study {settings.name}: {refusal}")
    return f"{fingerprint} (give it to the coordinator to register)"


def _ca(site: SiteSettings) -> str:
    from consortia.common.crypto.certificates import check_is_ca, load_certificate

    if site.node.insecure or site.node.root_certificates is None:
        return "none (node.insecure: plaintext)"
    check_is_ca(load_certificate(site.node.root_certificates), site.node.root_certificates)
    return "a CA certificate"


def _server(site: SiteSettings) -> str:
    ca = None if site.node.insecure else site.node.root_certificates
    if not check_server_connection(site.node.superlink, ca, timeout_s=5.0):
        raise ConsortiaError(f"server unreachable at {site.node.superlink} (nobody answers)")
    return f"answers at {site.node.superlink}" + ("" if ca is None else " over TLS")


def _datasets(site: SiteSettings) -> str:
    from consortia.client.data.dataset import SiteDataset

    lines, broken = [], 0
    for name, data in (("(default)", site.data), *site.datasets.items()):
        report = SiteDataset.open(data.path, cache_dir=site.cache_dir).check()
        s = report.summary
        lines.append(f"{name}: {s.passed} of {s.cases} case(s) read, cache warm")
        if not report.usable:
            broken += 1
            lines[-1] += " - NOT USABLE: " + "; ".join(report.reasons)
    if broken:
        raise ConsortiaError("; ".join(lines) + " (see `consortia data check`)")
    return "; ".join(lines)


def _approvals(site: SiteSettings) -> str:
    rows = ApprovalStore.for_site(site).list()
    return f"{len(rows)} approved stud(ies): " + (", ".join(r.study for r in rows) or "none")


def _device(site: SiteSettings) -> str:
    from consortia.common.networks.device import select_device

    return f"{site.node.device} -> {select_device(site.node.device)}"


def _run_steps(steps: list[tuple[str, Step]]) -> tuple[Table, int]:
    table = Table(title="Node check", show_header=False)
    table.add_column("check", style="bold")
    table.add_column("result", overflow="fold")
    failed = 0
    for name, step in steps:
        try:
            table.add_row(name, f"[green]OK[/] {escape(step())}")
        except (ConsortiaError, OSError, ValueError) as err:
            failed += 1
            table.add_row(name, f"[red]PROBLEM[/] {escape(str(err))}")
    return table, failed


def node_check(
    site_config: Annotated[Path, typer.Option("--site-config", help=_SITE_HELP)],
    run_config: Annotated[
        Path | None, typer.Option("--run", help="A study's run config: is the key on its roster?")
    ] = None,
) -> None:
    """A dry run: keys, CA, server, manifests, every case, cache, approvals, device."""
    site = load_site_settings(site_config)
    steps: list[tuple[str, Step]] = [
        ("site key", lambda: _key(site, run_config)),
        ("consortium CA", lambda: _ca(site)),
        ("server", lambda: _server(site)),
        ("data sets", lambda: _datasets(site)),
        ("approvals", lambda: _approvals(site)),
        ("device", lambda: _device(site)),
    ]
    table, failed = _run_steps(steps)
    Console(width=max(Console().width, 120)).print(table)
    raise typer.Exit(1 if failed else 0)


def _budget_rows(site: SiteSettings) -> list[tuple[str, str, str]]:
    from consortia.client.data.dataset import SiteDataset
    from consortia.common.privacy.ledger import PrivacyLedger, ledger_path

    rows = []
    limit = site.privacy.max_epsilon
    for name, data in (("(default)", site.data), *site.datasets.items()):
        try:
            fingerprint = SiteDataset.open(data.path, cache_dir=site.cache_dir).fingerprint
            path = ledger_path(site.ledger_dir, fingerprint)
            ledger = PrivacyLedger.open(path, fingerprint, site.site.name)
            spent = ledger.spent(site.privacy.delta, "rdp") if ledger.entries else 0.0
        except ConsortiaError as err:
            rows.append((name, "?", f"unreadable: {err}"))
            continue
        rows.append((name, f"{spent:.3f}", f"{max(limit - spent, 0.0):.3f} of {limit:g}"))
    return rows


def node_status(
    site_config: Annotated[Path, typer.Option("--site-config", help=_SITE_HELP)],
) -> None:
    """Connected or not, the approvals, and epsilon spent and left per data set."""
    site = load_site_settings(site_config)
    console = Console()
    try:
        _server(site)
        console.print(f"server: [green]connected[/] ({site.node.superlink})")
    except ConsortiaError as err:
        console.print(f"server: [red]not connected[/]: {escape(str(err))}")
    console.print(f"approvals: {escape(_approvals(site))}")
    table = Table(title=f"Privacy budget (delta {site.privacy.delta:g})")
    for column in ("data set", "epsilon spent", "left"):
        table.add_column(column)
    for row in _budget_rows(site):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
