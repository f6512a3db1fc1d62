"""The auditor's commands: `consortia audit privacy RUN_DIR [--ledger FILE ...] [--json]`.

Exit status: 0 when nothing is flagged, 1 when something is, 2 when the input is unusable
(no run folder, a malformed `results.json`). docs/auditing.md explains the output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from consortia.common.errors import ConsortiaError
from consortia.server.privacy_audit import PrivacyAudit, SiteAudit, audit_privacy
from consortia.server.privacy_recompute import VALUE_DISCRETIZATION_INTERVAL, Recomputed

__all__ = ["audit_app", "privacy_command", "render_audit"]

audit_app = typer.Typer(
    help="Check a run's records: privacy spent per site, recomputed independently.",
    no_args_is_help=True,
)

_RUN_DIR_HELP = "The run folder (holds results.json)."
_LEDGER_HELP = (
    "A site's privacy ledger (<node state dir>/privacy/<data set fingerprint>.json); "
    "repeat for several sites. Matched to a site by the data set fingerprint."
)
_JSON_HELP = "Print one JSON document (sites, rounds, recomputed values, flags) instead."


_ROUND_COLUMNS = (
    "round",
    "sigma",
    "q",
    "steps",
    "total",
    "RDP*",
    "PLD*",
    "ledger",
    "run",
    "RDP*",
    "PLD*",
)
_SITE_COLUMNS = (
    "site",
    "data set",
    "limit",
    "δ",
    "before",
    "run",
    "total",
    "RDP/PLD*",
    "ledger",
    "status",
)
_STATUS_STYLE = {"ok": "green", "flagged": "red", "over limit": "bold red"}


def _eps(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _rec(rec: Recomputed | None) -> tuple[str, str]:
    return ("—", "—") if rec is None else (f"{rec.rdp:.4g}", f"{rec.pld:.4g}")


def _table(title: str, headers: Sequence[str], caption: str | None = None) -> Table:
    table = Table(
        title=title,
        caption=caption,
        title_justify="left",
        caption_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
    )
    for header in headers:
        table.add_column(header, justify="right", overflow="fold")
    return table


def _site_table(site: SiteAudit) -> Table:
    """One row per round; δ and accountant go to the title when every round shares them."""
    deltas = {f"{row.reported.delta:.3g}" for row in site.rounds}
    accountants = {row.reported.accountant for row in site.rounds}
    uniform = len(deltas) == 1 and len(accountants) == 1
    title = f"site {escape(site.name)}, per round: ε total (lifetime) and ε run (this run)"
    if uniform:
        title += f"; δ {deltas.pop()}, accountant {accountants.pop()}"
    table = _table(title, _ROUND_COLUMNS if uniform else (*_ROUND_COLUMNS, "δ", "acct"))
    for row in site.rounds:
        reported = row.reported
        cells = [
            str(row.round) if row.source == "server" else f"{row.round} (ledger only)",
            f"{reported.noise_multiplier:.4g}",
            f"{reported.sample_rate:.4g}",
            str(reported.steps),
            _eps(reported.epsilon),
            *_rec(row.lifetime_recomputed),
            _eps(row.ledger_epsilon),
            _eps(reported.run_epsilon),
            *_rec(row.run_recomputed),
        ]
        if not uniform:
            cells += [f"{reported.delta:.3g}", reported.accountant]
        table.add_row(*cells)
    return table


def _summary_table(audit: PrivacyAudit) -> Table:
    table = _table("sites: ε limit, before, in and after this run (total)", _SITE_COLUMNS)
    ledgers = {ledger.site: ledger.status for ledger in audit.ledgers if ledger.site}
    for site in audit.sites:
        rdp, pld = _rec(site.recomputed)
        policy = site.policy
        style = _STATUS_STYLE.get(site.status, "yellow")
        table.add_row(
            escape(site.name),
            (policy.dataset_fingerprint[:8] + "…") if policy else "?",
            f"{policy.max_epsilon:g}" if policy else "—",
            f"{policy.delta:.3g}" if policy else "—",
            _eps(policy.epsilon_before_run if policy else None),
            _eps(site.run_epsilon),
            _eps(site.epsilon),
            "—" if site.recomputed is None else f"{rdp} / {pld}",
            ledgers.get(site.name, "not given"),
            f"[{style}]{escape(site.status)}[/]",
        )
    return table


def _ledger_tables(audit: PrivacyAudit) -> list[Table]:
    tables = []
    for ledger in audit.ledgers:
        if ledger.status != "ok":
            continue
        title = f"ledger of site {escape(ledger.site or '?')} (all runs; this run in bold)"
        headers = ("#", "run", "round", "ε", "RDP*", "PLD*", "δ", "acct")
        table = _table(title, headers, caption=escape(ledger.path))
        for entry in ledger.entries:
            run_id = escape(entry.run_id)
            table.add_row(
                str(entry.index),
                f"[bold]{run_id}[/]" if entry.run_id == audit.run_name else run_id,
                str(entry.round),
                _eps(entry.epsilon),
                *_rec(entry.recomputed),
                f"{entry.delta:.3g}",
                entry.accountant,
            )
        tables.append(table)
    return tables


def render_audit(audit: PrivacyAudit, console: Console) -> None:
    """The audit as Rich tables, then the flags."""
    sample = audit.sample_level
    console.print(
        f"[bold]Privacy audit of run {escape(audit.run_name)}[/] ({escape(audit.run_dir)})"
    )
    if sample.get("noise_multiplier") is not None:
        budget = f"fixed noise multiplier {sample['noise_multiplier']:g}"
    else:
        budget = f"target ε per run {sample.get('target_epsilon')}"
    console.print(
        "sample-level DP-SGD: "
        + ("on" if sample.get("enabled", True) else "[red]off[/]")
        + f", accountant {sample.get('accountant', '?')}, clipping norm "
        f"{sample.get('max_grad_norm', '?')}, {budget}",
        highlight=False,
    )
    if audit.central.get("enabled"):
        console.print(
            f"central (client-level) DP: noise multiplier {audit.central.get('noise_multiplier')}"
            f", δ {audit.central.get('delta')}, ε {audit.central.get('epsilon')}"
        )
    console.print(_summary_table(audit))
    for site in audit.sites:
        if site.rounds:
            console.print(_site_table(site))
    for table in _ledger_tables(audit):
        console.print(table)
    console.print(
        "* recomputed with Google's dp-accounting: RDP (RdpAccountant) and PLD "
        f"(PLDAccountant, discretisation {VALUE_DISCRETIZATION_INTERVAL:g}). "
        "'total' = the data set's lifetime epsilon (from the ledger's history), "
        "'run' = this run's rounds (from the server's records)."
    )
    if audit.clean:
        console.print("[green]Nothing flagged.[/]")
        return
    console.print(f"[bold red]{len(audit.flags)} finding(s):[/]")
    for flag in audit.flags:
        console.print(f"  [red]{flag.kind}[/]: {escape(flag.message)}", highlight=False)


@audit_app.command("privacy")
def privacy_command(
    run_dir: Annotated[
        Path, typer.Argument(help=_RUN_DIR_HELP, exists=True, file_okay=False, dir_okay=True)
    ],
    ledger: Annotated[
        list[Path] | None,
        typer.Option("--ledger", help=_LEDGER_HELP, exists=True, dir_okay=False),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Every site's epsilon and delta per round, checked against its ledger and recomputed.

    Recomputes with Google's dp-accounting (RDP and PLD). Exit status 0: nothing flagged;
    1: findings (listed at the end); 2: unusable input. See docs/auditing.md."""
    try:
        audit = audit_privacy(run_dir, ledger or [])
    except ConsortiaError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if json_output:
        typer.echo(json.dumps(audit.to_dict(), indent=2, allow_nan=False))
    else:
        render_audit(audit, Console())
    if not audit.clean:
        raise typer.Exit(1)
