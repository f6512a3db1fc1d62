"""`consortia run RUN.toml --simulation SITES_DIR`: many simulated sites in one machine,
on Flower's simulation engine (the optional `simulation` extra: Ray).

Each `*.toml` site config in SITES_DIR becomes one simulated SuperNode (in file-name
order); its `[node]` table is ignored. The ServerApp and ClientApp are the same as in a
deployment, so the results folder is the same too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rich.console import Console

from consortia.common.config.settings import RunSettings, load_site_settings
from consortia.common.errors import ConfigError, ConsortiaError
from consortia.common.processes import ProcessGroup, free_port
from consortia.server.control import SuperLinkConnection
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


def run_simulation(
    settings: RunSettings,
    run_name: str,
    sites_dir: Path,
    runs_dir: Path,
    work_dir: Path,
    console: Console,
    *,
    cpus_per_site: int = 1,
) -> Path:
    """Run the study on Flower's simulation engine; returns the run folder."""
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
