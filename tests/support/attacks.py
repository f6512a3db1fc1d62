"""Test helper: federated runs with one malicious training site, through Flower's runtime.

Five training sites and one held-out site on synthetic demo data; site `ATTACKER` sends
sign-flipped or x100-scaled updates (`tests/support/attack_app`). Every run's Flower App is
Consortia's with the malicious ClientApp as its `clientapp` component; the ServerApp,
the handlers and the approval and signing mods are Consortia's own, unchanged.

Two ways to run them: `SimulatedFederation` (Flower's simulation engine: one SuperLink,
several runs; what the e2e test and the benchmark use, about 6x cheaper on 2 cores) and
`run_attacked` on a `CliFederation` (SuperLink and SuperNodes on 127.0.0.1, TLS,
registered keys: the malicious update is signed by an authenticated site).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from rich.console import Console

from consortia.common.config.settings import RunSettings, load_run_settings, load_site_settings
from consortia.common.processes import ProcessGroup, free_port
from consortia.server.control import SuperLinkConnection
from consortia.server.launch.simulation import simulation_sites
from consortia.server.launch.submit import submit_run
from consortia.server.launch.superlink import start_superlink
from consortia.server.report.progress import watch_run
from tests.support.attack_app.app_dir import Attack, write_attack_app_dir
from tests.support.builders import NO_DP, run_toml
from tests.support.cli_federation import CliFederation
from tests.support.federation import SiteSpec, write_simulation_sites, write_site_configs

__all__ = [
    "ATTACKER",
    "HOLDOUT",
    "TRAIN_SITES",
    "SimulatedFederation",
    "final_holdout_dice",
    "initial_holdout_dice",
    "kept_sites",
    "run_attacked",
    "run_config",
    "write_sites",
]

TRAIN_SITES: Final = tuple(f"site-{index}" for index in range(5))
HOLDOUT: Final = "holdout"
ATTACKER: Final = TRAIN_SITES[-1]


def run_config(
    name: str,
    strategy: str,
    *,
    rounds: int = 10,
    local_epochs: int = 10,
    learning_rate: float = 0.002,
    batch_size: int = 16,
    outlier_factor: float = 0.0,
) -> str:
    """A run config (TOML) for the six sites: small 2D U-Net, no DP, plain aggregation.

    `outlier_factor` 0 turns off the server's norm check (its default, 10, would reject
    an x100 update before any strategy sees it): the strategy alone faces the attack."""
    return run_toml(
        name,
        rounds=rounds,
        min_sites=len(TRAIN_SITES) + 1,
        connect_timeout_s=120,
        round_timeout_s=300,
        training={
            "batch_size": batch_size,
            "local_epochs": local_epochs,
            "learning_rate": learning_rate,
        },
        privacy=NO_DP,
        # Secure aggregation would hide each update (robust strategies turn it off).
        secure_aggregation={"mode": "off"},
        tables={
            "strategy": {"name": strategy},
            "validation": {"outlier_factor": outlier_factor},
        },
    )


def write_sites(
    folder: Path,
    *,
    train_cases: int = 64,
    holdout_cases: int = 32,
    federation: CliFederation | None = None,
) -> list[Path]:
    """Data and configs of the five training sites and the held-out site (whose Dice is
    over all its `train_cases + holdout_cases` cases). For `federation`'s nodes: one
    folder per site; when it is None, simulated sites: `NAME.toml` and `NAME.npz` in
    `folder` (`SimulatedFederation(root, folder)`)."""
    sites = [
        SiteSpec(name, role="train", train_cases=train_cases, test_cases=4) for name in TRAIN_SITES
    ]
    sites.append(
        SiteSpec(HOLDOUT, role="holdout", train_cases=train_cases, test_cases=holdout_cases)
    )
    if federation is None:
        return write_simulation_sites(folder, sites)
    return write_site_configs(federation, sites, folder)


def _settings(work: Path, config_text: str) -> RunSettings:
    """Validate the run config as `consortia run` does (from a file in `work`)."""
    work.mkdir(parents=True)
    config = work / "run.toml"
    config.write_text(config_text, encoding="utf-8")
    return load_run_settings(config)


def _submit(
    work: Path,
    name: str,
    settings: RunSettings,
    attack: Attack,
    connection: SuperLinkConnection,
    runs_dir: Path,
    check_alive: Callable[[], None],
    *,
    simulation_sites: Sequence[Path] = (),
    timeout_s: float,
) -> dict[str, Any]:
    app_dir = write_attack_app_dir(work / "app", settings, name, attack, simulation_sites)
    federation_config = {"num-supernodes": len(simulation_sites)} if simulation_sites else None
    run_id = submit_run(app_dir, connection, federation_config=federation_config)
    run_dir = runs_dir / name
    results = watch_run(
        run_id,
        connection,
        run_dir,
        settings.rounds,
        settings.task,
        console=Console(quiet=True),
        check_alive=check_alive,
        timeout_s=timeout_s,
    )
    return {"dir": run_dir, **results}


class SimulatedFederation:
    """The sites on Flower's simulation engine: one SuperLink (simulation mode) started
    on entry, any number of runs, everything stopped on exit."""

    def __init__(self, root: Path, sites_dir: Path) -> None:
        self.root = root
        self.runs = root / "runs"
        self.sites = simulation_sites(sites_dir)
        self.port = free_port()
        self.connection = SuperLinkConnection(f"127.0.0.1:{self.port}", root / "flwr-cli")
        self._group = ProcessGroup()

    def __enter__(self) -> SimulatedFederation:
        self._group.__enter__()
        # The attack tests ship a malicious ClientApp mod in their own FAB: the app check
        # that `consortia server start` and `consortia run --simulation` apply is skipped.
        start_superlink(
            self._group,
            self.root / "superlink",
            self.runs,
            port=self.port,
            simulation=True,
            allow_app_code=True,
        )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._group.__exit__(kind, error, trace)

    def run(
        self, name: str, config_text: str, attack: Attack, *, timeout_s: float = 600.0
    ) -> dict[str, Any]:
        """Run a config with `attack` and wait for it; results.json plus its `dir`.
        `name` is the run's name, unique within the federation."""
        work = self.root / "submissions" / name
        return _submit(
            work,
            name,
            _settings(work, config_text),
            attack,
            self.connection,
            self.runs,
            self._group.check_alive,
            simulation_sites=self.sites,
            timeout_s=timeout_s,
        )


def run_attacked(
    federation: CliFederation,
    name: str,
    config_text: str,
    attack: Attack,
    *,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Submit a run config with `attack` to a started, secured `CliFederation` and wait
    for it (every started site approves it first); results.json plus its `dir`."""
    if federation.consortium is None:
        raise ValueError("attack runs need a secured federation (signed updates)")
    work = federation.root / "submissions" / name
    settings = _settings(work, config_text)
    for site_config in federation.site_configs:
        federation.consortium.approve(load_site_settings(site_config), settings, by="tests")
    connection = federation.consortium.connection(federation.control, work / "flwr")

    def check_alive() -> None:
        if federation.server is not None and federation.server.poll() is not None:
            raise RuntimeError(f"the server exited with code {federation.server.returncode}")

    return _submit(
        work, name, settings, attack, connection, federation.runs, check_alive, timeout_s=timeout_s
    )


def _holdout_dice(entry: dict[str, Any]) -> float:
    dice = ((entry.get("evaluation") or {}).get("holdout") or {}).get("dice")
    if dice is None:
        raise ValueError(f"round {entry.get('round')}: no held-out Dice in the results")
    return float(dice)


def final_holdout_dice(results: dict[str, Any]) -> float:
    """Held-out Dice of the run's final model."""
    return _holdout_dice(results["rounds"][-1])


def initial_holdout_dice(results: dict[str, Any]) -> float:
    """Held-out Dice of the untrained model (round 0)."""
    [initial] = [entry for entry in results["rounds"] if entry["round"] == 0]
    return _holdout_dice(initial)


def kept_sites(results: dict[str, Any]) -> list[list[str]]:
    """Per training round: the sites whose updates the strategy used."""
    return [list(entry["strategy"]["kept"]) for entry in results["rounds"] if entry["round"] >= 1]
