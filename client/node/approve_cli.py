"""`consortia node approve | approvals | revoke`: the runs a hospital agrees to take part in.

Plain Typer command functions; the lead registers them on the `node` group. `approve`
first shows a summary of the study (task, model, preprocessing or plan, rounds, DP and
epsilon, secure aggregation, roster) and its privacy plan at this site (`consortia privacy
plan`). It refuses, with every reason, a study that breaks the site's privacy policy or
the budget left on the data set, or that does not fit the data set
(`consortia.client.node.study_fit`, the check the node repeats before it trains), and a
study unlikely to learn when the site's policy sets `refuse_if_unlikely_to_learn`.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from consortia.client.node.study_fit import StudyRefusedError, epsilon_spent, study_refusals
from consortia.client.privacy.cli import print_plan, site_plan
from consortia.common.audit.approvals import Approval, ApprovalStore
from consortia.common.config.settings import (
    Role,
    RunSettings,
    SiteSettings,
    load_run_settings,
    load_site_settings,
)
from consortia.common.errors import ConsortiaError
from consortia.common.wire.run_identity import app_hash_details, config_hash, short_hash

__all__ = ["approvals", "approve", "revoke"]

_SITE_HELP = "The site's TOML config (its \\[node] state_dir holds the approvals)."


def _default_approver() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or password database
        return "unknown"


def _store(site_config: Path) -> ApprovalStore:
    return ApprovalStore.for_site(load_site_settings(site_config))


def _show_plan(
    settings: RunSettings,
    site: SiteSettings,
    run_config: Path,
    site_config: Path,
    console: Console,
) -> None:
    """Print the study's privacy plan at this site; raise `UnlikelyToLearnError` when the
    site's policy refuses studies unlikely to learn and this one is, or cannot be planned."""
    from consortia.common.privacy.planner import UnlikelyToLearnError

    refuse = site.privacy.refuse_if_unlikely_to_learn
    field = f"{site_config}: privacy.refuse_if_unlikely_to_learn"
    try:
        plan = site_plan(settings, site, run_source=str(run_config), site_source=str(site_config))
    except ConsortiaError as err:
        if refuse and settings.privacy.enabled and site.site.role is Role.TRAIN:
            raise UnlikelyToLearnError(
                f"{field}: study {settings.name} not approved: it cannot be planned, so "
                f"whether it would learn is unknown: {err}"
            ) from None
        console.print(f"No privacy plan: {escape(str(err))}", soft_wrap=True)
        return
    print_plan(plan, console)
    if refuse and plan.unlikely_to_learn:
        raise UnlikelyToLearnError(
            f"{field}: study {settings.name} not approved: {plan.assessment}"
        )


def _check_warm_start(settings: RunSettings) -> str:
    """The study's starting weights for the summary; a warm start (`model.init`) is
    checked first (file beside the run config, architecture, SHA-256) or refused."""
    init = settings.model.init
    if init is None:
        return "none (the run-seeded model)"
    from consortia.common.networks.warm_start import load_warm_start  # torch: only here

    checked = load_warm_start(settings)
    return f"{checked.sha256} ({escape(init.path)}, checked)"


def _summary(settings: RunSettings, run_config: Path) -> Table:
    """What is being approved, in one table."""
    table = Table(title=f"Study {settings.name} ({escape(str(run_config))})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    model = settings.model
    table.add_row("task", f"{settings.task.value} on data set {settings.dataset or '(default)'}")
    table.add_row(
        "model",
        f"{model.architecture} {model.spatial_dims}D, {model.in_channels} channel(s) in, "
        f"{model.out_channels} out",
    )
    if settings.plan is not None:
        plan = settings.plan
        table.add_row(
            "plan",
            f"spacing {list(plan.target_spacing)}, size {list(plan.spatial_size)}, "
            f"patch {list(plan.patch_size)}",
        )
    else:
        table.add_row("preprocessing", "the data set's own manifest [preprocess]")
    training = settings.training
    table.add_row(
        "rounds",
        f"{settings.rounds} x {training.local_epochs} local epoch(s), batch "
        f"{training.batch_size}, {training.optimizer} lr {training.learning_rate:g}",
    )
    dp = settings.privacy
    if dp.enabled:
        budget = (
            f"target epsilon {dp.target_epsilon:g}"
            if dp.target_epsilon is not None
            else f"noise multiplier {dp.noise_multiplier:g}"
        )
        table.add_row("DP-SGD", f"on: {budget}, clipping norm {dp.max_grad_norm:g}")
    else:
        table.add_row("DP-SGD", "[red]off[/]")
    table.add_row("secure aggregation", settings.secure_aggregation.mode)
    roster = ", ".join(f"{e.name} ({e.role.value})" for e in settings.sites) or "any site"
    table.add_row("roster", roster)
    return table


def _check_fit(
    settings: RunSettings, site: SiteSettings, site_config: Path, console: Console
) -> None:
    """Raise `StudyRefusedError` with every reason the study does not fit this site."""
    spent: float | None = None
    if site.site.role is Role.TRAIN and settings.privacy.enabled:
        try:
            spent = epsilon_spent(site, settings.dataset, settings)
        except ConsortiaError as err:  # the node's own check refuses it again at run time
            console.print(f"Budget left unknown (data set unreadable): {escape(str(err))}")
    reasons = study_refusals(settings, site, spent=spent)
    if reasons:
        raise StudyRefusedError(
            f"{site_config}: study {settings.name} not approved: " + "; ".join(reasons)
        )


def approve(
    run_config: Annotated[Path, typer.Argument(help="The study's run config (TOML).")],
    site_config: Annotated[Path, typer.Option("--site-config", help=_SITE_HELP)],
    by: Annotated[
        str | None, typer.Option(help="Who approves (free text); default: the OS user name.")
    ] = None,
    note: Annotated[str, typer.Option(help="A note kept with the approval.")] = "",
) -> None:
    """Approve runs of this study's config on the Consortia code installed here."""
    settings = load_run_settings(run_config)
    site = load_site_settings(site_config)
    store = ApprovalStore.for_site(site)
    console = Console()
    console.print(_summary(settings, run_config))
    _check_fit(settings, site, site_config, console)
    _show_plan(settings, site, run_config, site_config, console)
    warm_start = _check_warm_start(settings)
    app = app_hash_details()
    config = config_hash(settings)
    existing = store.find(config, app["app_hash"])
    approval = store.approve(
        settings, by=by if by is not None else _default_approver(), note=note, app=app["app_hash"]
    )
    if existing is None:
        console.print(f"Approved study [bold]{approval.study}[/].")
    else:
        console.print(
            f"Study [bold]{approval.study}[/] was already approved "
            f"({approval.approved_at} by {escape(approval.approved_by)}); nothing changed."
        )
    console.print(f"  config hash: {approval.config_hash}", soft_wrap=True)
    console.print(
        f"  app hash:    {approval.app_hash} (consortia {app['version']}, {app['files']} files)",
        soft_wrap=True,
    )
    console.print(f"  warm start:  {warm_start}", soft_wrap=True)
    console.print(f"  recorded in: {escape(str(store.path))}", soft_wrap=True)


def _table(rows: list[Approval]) -> Table:
    table = Table(title="Approved runs")
    for column in ("study", "config", "app", "approved at (UTC)", "by", "note"):
        table.add_column(column, no_wrap=column not in {"by", "note"})
    for row in rows:
        table.add_row(
            row.study,
            short_hash(row.config_hash),
            short_hash(row.app_hash),
            row.approved_at,
            escape(row.approved_by),
            escape(row.note),
        )
    return table


def approvals(
    site_config: Annotated[Path, typer.Option("--site-config", help=_SITE_HELP)],
) -> None:
    """List the runs this site has approved (short hashes)."""
    store = _store(site_config)
    rows = store.list()
    console = Console()
    if not rows:
        console.print(f"No approved runs ({escape(str(store.path))}).", soft_wrap=True)
        return
    console.print(_table(rows))
    current = short_hash(app_hash_details()["app_hash"])
    console.print(f"App code installed here: {current}")


def revoke(
    config_hash_prefix: Annotated[
        str, typer.Argument(help="The config hash to revoke, or its first digits (4 or more).")
    ],
    site_config: Annotated[Path, typer.Option("--site-config", help=_SITE_HELP)],
) -> None:
    """Withdraw the approval of a run config (for every app version)."""
    store = _store(site_config)
    removed = store.revoke(store.resolve(config_hash_prefix))
    Console().print(
        f"Revoked {len(removed)} approval(s) of study [bold]{removed[0].study}[/] "
        f"(config {short_hash(removed[0].config_hash)}).",
        soft_wrap=True,
    )
