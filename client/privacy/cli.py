"""`consortia privacy plan RUN.toml --site-config SITE.toml`: what a study's DP-SGD will
cost this site, and whether it is likely to learn, before any budget is spent.

The figures come from `consortia.common.privacy.planner` over this site's own data set
(its training examples) and privacy ledger; `consortia node approve` shows the same plan.
torch and Opacus (the accountant) load inside the command, not at `consortia` startup.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from consortia.common.config.settings import (
    DataSettings,
    RunSettings,
    SiteInfo,
    SiteSettings,
    load_run_settings,
    load_site_settings,
)

if TYPE_CHECKING:
    from consortia.common.privacy.planner import PrivacyPlan

__all__ = ["plan", "print_plan", "privacy_app", "site_plan"]

privacy_app = typer.Typer(
    help="Plan a study's differential privacy before any budget is spent.",
    no_args_is_help=True,
)


def site_plan(
    run: RunSettings,
    site: SiteSettings,
    *,
    run_source: str,
    site_source: str,
    cases: int | None = None,
) -> PrivacyPlan:
    """The plan of `run` at `site`: its data set's training examples (or `cases`, a
    what-if with an empty ledger) and its ledger's history. `PlanError`, `ConfigError`,
    `DataError` or `LedgerError` (all `ConsortiaError`) say why there is none."""
    from consortia.common.privacy.planner import check_plannable, plan_study

    check_plannable(run, site, run_source=run_source, site_source=site_source)
    if cases is not None:
        return plan_study(run, site, cases, (), run_source=run_source, site_source=site_source)
    from consortia.client.data.dataset import SiteDataset
    from consortia.common.privacy.ledger import PrivacyLedger, ledger_path

    data = site.dataset(run.dataset)
    dataset = SiteDataset.open(data.path, cache_dir=site.cache_dir)
    num_examples = dataset.count(run.task, ("train",))
    fingerprint = dataset.fingerprint
    ledger = PrivacyLedger.open(
        ledger_path(site.ledger_dir, fingerprint), fingerprint, site.site.name
    )
    return plan_study(
        run,
        site,
        num_examples,
        ledger.history(),
        run_source=run_source,
        site_source=site_source,
    )


_OUTLOOK = {
    "likely": "likely to learn (with a loss against no DP)",
    "uncertain": "uncertain: not measured at this noise",
    "unlikely": "unlikely to learn",
}


def _table(plan: PrivacyPlan) -> Table:
    table = Table(title=f"Privacy plan: study {plan.study} at site {plan.site}")
    table.add_column("figure")
    table.add_column("value")
    if plan.target_epsilon is not None:
        source = f"for the study's target epsilon {plan.target_epsilon:g}"
    else:
        source = "fixed by the run config"
    rows = [
        ("training examples N", str(plan.num_examples)),
        ("batch size B (run config)", str(plan.batch_size)),
        (
            "sample rate q = 1/ceil(N/B)",
            f"{plan.sample_rate:.4g} (expected batch N*q = {plan.expected_batch_size:.4g})",
        ),
        (
            "DP steps over the study",
            f"{plan.steps} ({plan.steps_per_round} per round x {plan.rounds} rounds)",
        ),
        ("noise multiplier sigma", f"{plan.noise_multiplier:.4g} ({source})"),
        ("clipping norm C", f"{plan.max_grad_norm:g}"),
        ("noise per coordinate sigma*C/B", f"{plan.noise_per_coordinate:.3g}"),
        (
            "epsilon this study spends",
            f"{plan.study_epsilon:.3f} at delta {plan.delta:g} ({plan.accountant})",
        ),
        (
            "lifetime epsilon of the data set",
            f"{plan.spent_before:.3f} now, {plan.spent_after:.3f} after the study "
            f"(limit {plan.max_epsilon:g})",
        ),
        ("lifetime budget left after the study", f"{plan.budget_left:.3f}"),
        ("outlook", _OUTLOOK[plan.outlook.value]),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


def print_plan(plan: PrivacyPlan, console: Console) -> None:
    """The plan as a table, then its assessment and any refusal by this site's node."""
    from consortia.common.privacy.planner import LearningOutlook

    console.print(_table(plan))
    if plan.outlook is LearningOutlook.UNLIKELY:
        console.print(f"[bold red]Warning:[/] {escape(plan.assessment)}", soft_wrap=True)
    elif plan.outlook is LearningOutlook.UNCERTAIN:
        console.print(f"[yellow]Caution:[/] {escape(plan.assessment)}", soft_wrap=True)
    else:
        console.print(escape(plan.assessment), soft_wrap=True)
    for reason in plan.refusals:
        console.print(f"[bold red]This site's node will refuse:[/] {escape(reason)}")


def _json(plan: PrivacyPlan) -> str:
    data = asdict(plan) | {
        "outlook": plan.outlook.value,
        "noise_per_coordinate": plan.noise_per_coordinate,
        "budget_left": plan.budget_left,
        "unlikely_to_learn": plan.unlikely_to_learn,
        "refusals": list(plan.refusals),
    }
    return json.dumps(data, indent=2)


@privacy_app.command("plan")
def plan(
    run_config: Annotated[Path, typer.Argument(help="The study's run config (TOML).")],
    site_config: Annotated[
        Path | None,
        typer.Option(
            "--site-config",
            help="The site's TOML config: its data set, \\[privacy] policy and ledger.",
        ),
    ] = None,
    cases: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Plan for this many training examples instead of reading the data set "
            "(a what-if with an empty ledger; without --site-config, the default policy).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Show what the study's DP-SGD will cost this site and whether it is likely to learn."""
    run = load_run_settings(run_config)
    if site_config is not None:
        site = load_site_settings(site_config)
        site_source = str(site_config)
    elif cases is not None:
        site = SiteSettings(site=SiteInfo(name="what-if"), data=DataSettings(path=Path()))
        site_source = "default site policy"
    else:
        raise typer.BadParameter("give --site-config, --cases or both", param_hint="--site-config")
    result = site_plan(run, site, run_source=str(run_config), site_source=site_source, cases=cases)
    if as_json:
        typer.echo(_json(result))
        return
    console = Console()
    if cases is not None:
        console.print(
            f"What-if plan for {cases} training examples ({escape(site_source)}, empty ledger).",
            soft_wrap=True,
        )
    print_plan(result, console)
