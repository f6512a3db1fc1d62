"""The auditor's commands:

- `consortia audit privacy RUN_DIR [--ledger FILE ...] [--json]`
- `consortia audit verify PATH [--ca CA.pem] [--server-cert CERT.pem ...]
  [--site-key NAME=PUB.pub[@SINCE] ...] [--provenance FILE] [--unfinished] [--json]`
- `consortia audit config-hash RUN.toml`, `consortia audit compare PROV_A PROV_B`
- `consortia audit countersign RUN_DIR/provenance.json --site-key SITE.key --site NAME
  [--ca CA.pem] [--audit-log NODE_STATE_DIR/audit.jsonl]`

Exit status: 0 when nothing is flagged, 1 when something is (or a countersignature is
refused), 2 when the input is unusable (no such path, a malformed `results.json`, a key
that cannot be loaded), 3 when `audit verify` found nothing altered but could not check
every signature against the auditor's own trust anchors (NOT VERIFIED).
docs/auditing.md explains the output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from consortia.common.audit.log import PROVENANCE_COUNTERSIGNED, AuditLog, node_log_label
from consortia.common.audit.provenance import (
    ProvenanceError,
    countersign,
    provenance_sha256,
    read_provenance,
    write_provenance,
)
from consortia.common.crypto.site_keys import load_site_private_key
from consortia.common.errors import ConsortiaError
from consortia.server.audit.verify import (
    VERDICT_INTACT,
    VERDICT_NOT_VERIFIED,
    VerifyReport,
    load_ca_certificate,
    load_server_certificates,
    parse_site_keys,
    verify_path,
)

if TYPE_CHECKING:  # the privacy audit (Opacus, torch, dp_accounting) loads when it runs
    from consortia.server.audit.privacy_audit import PrivacyAudit, SiteAudit
    from consortia.server.audit.privacy_recompute import Recomputed

__all__ = [
    "audit_app",
    "countersign_command",
    "privacy_command",
    "render_audit",
    "render_verify",
    "verify_command",
]

audit_app = typer.Typer(
    help="Check a run's records: privacy spent per site, recomputed independently; "
    "audit logs and signed provenance unaltered.",
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
            (policy.dataset_fingerprint or "?")[:8] + "…" if policy else "?",
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
    from consortia.server.audit.privacy_recompute import VALUE_DISCRETIZATION_INTERVAL

    sample = audit.sample_level
    console.print(
        f"[bold]Privacy audit of run {escape(audit.run_name)}[/] ({escape(audit.run_dir)})"
    )
    if sample.noise_multiplier is not None:
        budget = f"fixed noise multiplier {sample.noise_multiplier:g}"
    else:
        budget = f"target ε per run {sample.target_epsilon}"
    console.print(
        "sample-level DP-SGD: "
        + ("on" if sample.enabled else "[red]off[/]")
        + f", accountant {sample.accountant or '?'}, clipping norm "
        f"{sample.max_grad_norm if sample.max_grad_norm is not None else '?'}, {budget}",
        highlight=False,
    )
    central = audit.central
    if central is not None and central.enabled:
        console.print(
            f"central (client-level) DP: noise multiplier {central.noise_multiplier}"
            f", δ {central.delta}, ε {central.epsilon}"
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
    unchecked = sites_without_ledger(audit)
    if unchecked:
        console.print(
            f"[yellow]Not checked against a ledger[/] ({len(unchecked)} training site(s)): "
            f"{escape(', '.join(unchecked))}. Their lifetime totals are the server's word "
            "only; pass each site's --ledger (--strict fails until every site's is given).",
            highlight=False,
        )
    if audit.clean:
        console.print(
            "[green]Nothing flagged.[/]"
            + (" (for the sites whose ledgers were given)" if unchecked else "")
        )
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
    strict: Annotated[
        bool, typer.Option(help="Fail (exit 1) when a training site's ledger was not given.")
    ] = False,
) -> None:
    """Every site's epsilon and delta per round, checked against its ledger and recomputed.

    Recomputes with Google's dp-accounting (RDP and PLD). Exit status 0: nothing flagged;
    1: findings (listed at the end), or with --strict a training site whose ledger was not
    given; 2: unusable input. See docs/auditing.md."""
    from consortia.server.audit.privacy_audit import audit_privacy

    try:
        audit = audit_privacy(run_dir, ledger or [])
    except ConsortiaError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    unchecked = sites_without_ledger(audit)
    if json_output:
        document = audit.to_dict() | {"sites_without_ledger": unchecked}
        typer.echo(json.dumps(document, indent=2, allow_nan=False))
    else:
        render_audit(audit, Console())
    if not audit.clean or (strict and unchecked):
        raise typer.Exit(1)


def sites_without_ledger(audit: PrivacyAudit) -> list[str]:
    """The training sites of the audit whose ledger was not given (not checked)."""
    return sorted(site.name for site in audit.sites if site.ledger is None)


@audit_app.command("config-hash")
def config_hash_command(
    run_config: Annotated[Path, typer.Argument(help="A study's run config (TOML).")],
) -> None:
    """The SHA-256 a site approves for this run config (as in approvals, the audit log and
    the provenance's config_hash). Exit status 2: the config is not valid."""
    from consortia.common.config.settings import load_run_settings
    from consortia.common.wire.run_identity import config_hash

    try:
        settings = load_run_settings(run_config)
    except ConsortiaError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{config_hash(settings)}  {run_config}")


@audit_app.command("compare")
def compare_command(
    first: Annotated[Path, typer.Argument(help="A provenance.json (e.g. the run folder's).")],
    second: Annotated[Path, typer.Argument(help="Another copy (e.g. a site's).")],
) -> None:
    """Whether two provenance copies hold the same signed content (whatever their
    signatures and formatting). Exit status 0: the same; 1: they differ (the differing
    fields are listed); 2: a file is not a provenance document."""
    from consortia.common.audit.provenance import provenance_sha256, read_provenance

    try:
        documents = [read_provenance(path) for path in (first, second)]
        digests = [provenance_sha256(document) for document in documents]
    except (ConsortiaError, KeyError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if digests[0] == digests[1]:
        typer.echo(f"SAME signed content: sha256 {digests[0]}")
        return
    bodies = [document["provenance"] for document in documents]
    fields = sorted(
        key for key in set(bodies[0]) | set(bodies[1]) if bodies[0].get(key) != bodies[1].get(key)
    )
    typer.echo(f"DIFFERENT signed content: {digests[0]} vs {digests[1]}")
    typer.echo(f"fields that differ: {', '.join(fields)}")
    raise typer.Exit(1)


_VERIFY_PATH_HELP = (
    "An audit log (.jsonl), a run folder (audit.jsonl, provenance.json, checkpoints) or a "
    "node state folder (audit.jsonl)."
)
_CA_HELP = "The consortium CA certificate (PEM): check that the server's certificate is from it."
_SITE_KEY_HELP = (
    "NAME=PUBLIC_KEY_FILE[@SINCE]: a site's registered public key (OpenSSH); its "
    "countersignature must use it. Repeat for each site; for a site whose key was replaced, "
    "once per key, with @SINCE (the registry's registered_at) on each replacement key."
)
_SERVER_CERT_HELP = (
    "A certificate the CA issued to the server (PEM); repeat for each (the rotation "
    "history, with --ca): the provenance must be signed by the one current at signing time."
)
_PROVENANCE_HELP = (
    "A signed provenance.json to check the log against (a run folder uses its own): the "
    "server log must end at its recorded head, a node's log must contain the head the "
    "server recorded for that node."
)


def render_verify(report: VerifyReport, console: Console) -> None:
    """The verdict, what was checked, each problem and each note."""
    console.print(f"[bold]Audit verification of {report.kind}[/] {escape(str(report.path))}")
    log = report.log
    if log is not None:
        console.print(
            f"  audit log {escape(log.path.name)}: {len(log.records)} record(s), label "
            f"{escape(str(log.label))}, head {str(log.head)[:16]}…",
            highlight=False,
        )
    if report.provenance_file is not None:
        signers = ", ".join(report.signers) or "nobody"
        console.print(
            f"  {escape(report.provenance_file.name)}: signed by {escape(signers)}",
            highlight=False,
        )
    if report.verdict == VERDICT_INTACT:
        console.print(
            "[bold green]INTACT[/]: no sign of alteration found, every signature checked."
        )
    elif report.verdict == VERDICT_NOT_VERIFIED:
        console.print(
            "[bold yellow]NOT VERIFIED[/]: no sign of alteration found, but "
            f"{len(report.unverified)} thing(s) could not be checked:"
        )
    else:
        console.print(f"[bold red]ALTERED OR DAMAGED[/]: {len(report.problems)} problem(s):")
        for problem in report.problems:
            console.print(f"  [red]✗[/] {escape(problem)}", highlight=False)
    for item in report.unverified:
        console.print(f"  [yellow]?[/] {escape(item)}", highlight=False)
    for note in report.notes:
        console.print(f"  [yellow]note[/]: {escape(note)}", highlight=False)


@audit_app.command("verify")
def verify_command(
    path: Annotated[Path, typer.Argument(help=_VERIFY_PATH_HELP)],
    ca: Annotated[Path | None, typer.Option("--ca", help=_CA_HELP)] = None,
    site_key: Annotated[list[str] | None, typer.Option("--site-key", help=_SITE_KEY_HELP)] = None,
    server_cert: Annotated[
        list[Path] | None, typer.Option("--server-cert", help=_SERVER_CERT_HELP)
    ] = None,
    provenance: Annotated[Path | None, typer.Option("--provenance", help=_PROVENANCE_HELP)] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead.")
    ] = False,
    unfinished: Annotated[
        bool,
        typer.Option(help="The run is still in progress: no provenance.json is expected yet."),
    ] = False,
) -> None:
    """Check that an audit log, and a run's signed provenance, were not altered.

    Exit status 0: intact and every signature checked; 1: problems found (listed);
    2: unreadable input; 3: not verified (nothing altered found, but the CA or a site's
    registered key was not given). See docs/auditing.md for what is detected and what is
    not."""
    try:
        ca_cert = None if ca is None else load_ca_certificate(ca)
        site_keys = parse_site_keys(site_key) if site_key else None
        report = verify_path(
            path,
            ca_cert=ca_cert,
            site_keys=site_keys,
            server_certs=load_server_certificates(server_cert) if server_cert else None,
            provenance_path=provenance,
            unfinished=unfinished,
        )
    except ConsortiaError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if json_output:
        typer.echo(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        render_verify(report, Console())
    if not report.ok:
        raise typer.Exit(1)
    if report.unverified:
        raise typer.Exit(3)


_NODE_LOG_HELP = (
    "The node's audit log (<node state dir>/audit.jsonl): record the countersignature "
    "in it (event provenance_countersigned)."
)


@audit_app.command("countersign")
def countersign_command(
    provenance_file: Annotated[
        Path, typer.Argument(help="The run's provenance.json (rewritten in place).")
    ],
    site_key: Annotated[
        Path, typer.Option("--site-key", help="The site's private key (OpenSSH, unencrypted).")
    ],
    site: Annotated[str, typer.Option("--site", help="The site's name in the run.")],
    ca: Annotated[Path | None, typer.Option("--ca", help=_CA_HELP)] = None,
    node_log: Annotated[Path | None, typer.Option("--audit-log", help=_NODE_LOG_HELP)] = None,
) -> None:
    """Add this site's countersignature to a run's signed provenance.

    The server signature is verified first (against the CA with --ca); a document that
    does not verify, or that this site already countersigned, is refused (exit 1)."""
    try:
        document = read_provenance(provenance_file)
        key = load_site_private_key(site_key)
        ca_cert = None if ca is None else load_ca_certificate(ca)
        log = None if node_log is None else AuditLog.open(node_log, node_log_label(site))
    except ConsortiaError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    try:
        signed = countersign(document, site, key, ca_cert=ca_cert)
    except ProvenanceError as err:
        typer.echo(f"refused: {provenance_file}: {err}", err=True)
        raise typer.Exit(1) from None
    write_provenance(provenance_file, signed)
    if log is not None:
        log.append(
            PROVENANCE_COUNTERSIGNED,
            run_id=signed["provenance"]["run_id"],
            provenance_sha256=provenance_sha256(signed),
            server_audit_head=signed["provenance"]["audit_log"]["head"],
        )
    if ca_cert is None:
        typer.echo(
            "note: the server signature was checked, but not who made it (pass --ca CA.pem)",
            err=True,
        )
    signers = ", ".join(str(entry["signer"]) for entry in signed["signatures"])
    typer.echo(f"{provenance_file}: countersigned by site {site} (signatures: {signers})")
