"""`consortia run RUN.toml --simulation SITES_DIR`: many simulated sites in one machine,
on Flower's simulation engine (the optional `simulation` extra: Ray).

Each `*.toml` site config in SITES_DIR becomes one simulated SuperNode (in file-name
order); its `[node]` table is ignored. The ServerApp and ClientApp are the same as in a
deployment, so the results folder is the same too. `--baselines` then trains the same
study pooled and at each training site alone, on the same held-out sites
(`consortia.server.launch.baselines`), and writes them into results.json and the report.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from consortia.common.config.settings import RunSettings, load_site_settings
from consortia.common.errors import ConfigError, ConsortiaError
from consortia.common.processes import ProcessGroup, free_port
from consortia.server.control import SuperLinkConnection
from consortia.server.launch.baselines import (
    BASELINES_DIR,
    baseline_result,
    baseline_settings,
    plan_baselines,
    record_baselines,
)
from consortia.server.launch.submit import submit_run, write_app_dir
from consortia.server.launch.superlink import start_superlink
from consortia.server.report.progress import watch_run

__all__ = ["run_simulation", "simulation_sites"]


def simulation_sites(sites_dir: Path) -> list[Path]:
    """The site configs of a simulation, each validated; errors name the file."""
    if not sites_dir.is_dir():
        raise ConfigError(f"{sites_dir}: not a folder of site configs")
    configs = sorted(sites_dir.glob("*.toml"))
    if not configs:
        raise ConfigError(f"{sites_dir}: no *.toml site configs in this folder")
    names: dict[str, Path] = {}
    for config in configs:
        site = load_site_settings(config)
        if site.site.name in names:
            raise ConfigError(
                f"{config}: site.name {site.site.name!r} also in {names[site.site.name]}"
            )
        names[site.site.name] = config
    return configs


def _simulate(
    settings: RunSettings,
    run_name: str,
    configs: Sequence[Path],
    runs_dir: Path,
    work_dir: Path,
    console: Console,
    cpus_per_site: int,
) -> Path:
    """One run on a fresh simulation SuperLink, followed to its end; its run folder."""
    if settings.min_sites > len(configs):
        raise ConfigError(
            f"run: min_sites = {settings.min_sites} but the simulation has {len(configs)} sites"
        )
    port = free_port()
    run_dir = runs_dir.resolve() / run_name
    app_dir = write_app_dir(work_dir / "app", settings, run_name, simulation_sites=configs)
    connection = SuperLinkConnection(f"127.0.0.1:{port}", work_dir / "flwr-cli")
    with ProcessGroup() as group:
        start_superlink(group, work_dir / "superlink", runs_dir, port=port, simulation=True)
        run_id = submit_run(
            app_dir,
            connection,
            federation_config={
                "num-supernodes": len(configs),
                "client-resources-num-cpus": cpus_per_site,
            },
        )
        console.print(f"Simulating {len(configs)} sites on Flower's simulation engine.")
        watch_run(
            run_id,
            connection,
            run_dir,
            settings.rounds,
            settings.task,
            console=console,
            check_alive=group.check_alive,
        )
    return run_dir


def _run_baselines(
    settings: RunSettings,
    run_dir: Path,
    configs: Sequence[Path],
    work_dir: Path,
    console: Console,
    cpus_per_site: int,
) -> None:
    """Train the pooled and local-only baselines, write them into the run's results.json
    and write the run's report (docs/performance.md, "Baselines")."""
    # Loaded here: the report's imports (matplotlib) stay out of `consortia --help`.
    from consortia.server.report.writer import REPORT_DIR, write_report

    plans = plan_baselines(configs, settings, work_dir)
    results = {}
    for plan in plans:
        console.print(
            f"Baseline [bold]{plan.label}[/]: training on {', '.join(plan.training_sites)}, "
            "scored on the held-out sites."
        )
        baseline_dir = _simulate(
            baseline_settings(settings, plan),
            f"{run_dir.name}-{plan.label}",
            plan.configs,
            run_dir / BASELINES_DIR,
            work_dir / BASELINES_DIR / plan.label,
            console,
            cpus_per_site,
        )
        results[plan.label] = baseline_result(plan, baseline_dir)
    record_baselines(run_dir, results)
    write_report(run_dir, run_dir / REPORT_DIR)
    console.print(f"Baselines written into {run_dir / 'results.json'} and its report.")


def run_simulation(
    settings: RunSettings,
    run_name: str,
    sites_dir: Path,
    runs_dir: Path,
    work_dir: Path,
    console: Console,
    *,
    cpus_per_site: int = 1,
    baselines: bool = False,
) -> Path:
    """Run the study on Flower's simulation engine; returns the run folder. With
    `baselines`, then the same study pooled and at each training site alone
    (`consortia.server.launch.baselines`)."""
    if importlib.util.find_spec("ray") is None:
        raise ConsortiaError(
            "Flower's simulation engine needs the 'simulation' extra: "
            "pip install 'consortia[simulation]'"
        )
    configs = simulation_sites(sites_dir)
    if settings.min_sites > len(configs):
        raise ConfigError(
            f"run: min_sites = {settings.min_sites} but {sites_dir} holds {len(configs)} sites"
        )
    if baselines:  # refuse a folder the baselines cannot use before anything trains
        plan_baselines(configs, settings, work_dir / "baselines-check")
    run_dir = _simulate(settings, run_name, configs, runs_dir, work_dir, console, cpus_per_site)
    if baselines:
        _run_baselines(settings, run_dir, configs, work_dir, console, cpus_per_site)
    return run_dir
