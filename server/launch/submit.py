"""Submit a study to a SuperLink as a Flower App, through Flower's own `flwr run`.

The app is generated from the validated run settings: a `pyproject.toml` declaring the
installed Consortia ServerApp/ClientApp components and carrying the settings as run
config. Its FAB hash therefore identifies the exact run configuration.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from consortia.common.config.settings import RunSettings
from consortia.common.processes import wait_for_address
from consortia.common.wire import records as rk
from consortia.server.control import SuperLinkConnection, flwr_json, toml_string

__all__ = [
    "APP_COMPONENTS",
    "submit_run",
    "write_app_dir",
]

logger = logging.getLogger("consortia.server")

APP_COMPONENTS = {
    "serverapp": "consortia.server.run.server_app:app",
    "clientapp": "consortia.client.client_app:app",
}


def write_app_dir(
    dest: Path,
    settings: RunSettings,
    run_name: str,
    simulation_sites: Sequence[Path] = (),
    *,
    resume: bool = False,
) -> Path:
    """Write the Flower App for one run into `dest` (a new folder); with `resume`, the
    server continues the run folder `run_name` from its last completed round."""
    from importlib.metadata import version

    dest.mkdir(parents=True, exist_ok=False)
    lines = [
        "[build-system]",
        'requires = ["setuptools>=69"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        'name = "consortia-study"',
        'version = "1.0.0"',
        'description = "A Consortia study"',
        'license = "Apache-2.0"',
        f'dependencies = ["consortia=={version("consortia")}"]',
        "",
        "[tool.flwr.app]",
        'publisher = "consortia"',
        "",
        "[tool.flwr.app.components]",
        *(f"{key} = {toml_string(value)}" for key, value in APP_COMPONENTS.items()),
        "",
        "[tool.flwr.app.config]",
        f"{rk.RUN_CONFIG_SETTINGS} = {toml_string(settings.to_json())}",
        f"{rk.RUN_CONFIG_RUN_NAME} = {toml_string(run_name)}",
    ]
    if resume:
        lines.append(f"{rk.RUN_CONFIG_RESUME} = {toml_string('true')}")
    if simulation_sites:
        listed = json.dumps([str(path.resolve()) for path in simulation_sites])
        lines.append(f"{rk.RUN_CONFIG_SIMULATION_SITES} = {toml_string(listed)}")
    lines.append("")
    (dest / "pyproject.toml").write_text("\n".join(lines), encoding="utf-8")
    return dest


def submit_run(
    app_dir: Path,
    connection: SuperLinkConnection,
    *,
    connect_timeout_s: float = 60.0,
    federation_config: Mapping[str, int | str] | None = None,
) -> int:
    """Start the run on the SuperLink's Control API; returns Flower's run id."""
    wait_for_address(connection.address, connect_timeout_s)
    overrides: list[str] = []
    if federation_config:
        pairs = " ".join(f"{key}={json.dumps(value)}" for key, value in federation_config.items())
        overrides = ["--federation-config", pairs]
    payload = flwr_json(connection, "run", str(app_dir), *overrides, what="the run")
    run_id = int(str(payload["run-id"]))
    logger.info("run submitted to %s (Flower run %d)", connection.address, run_id)
    return run_id
