"""Submit a study to a SuperLink as a Flower App, through Flower's own `flwr run`.

The app is generated from the validated run settings: a `pyproject.toml` declaring the
installed Consortia ServerApp/ClientApp components and carrying the settings as run
config. Its FAB hash therefore identifies the exact run configuration.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from consortia.common import records as rk
from consortia.common.errors import ConsortiaError
from consortia.common.processes import process_env, wait_for_address
from consortia.common.settings import RunSettings

__all__ = [
    "APP_COMPONENTS",
    "SuperLinkConnection",
    "flwr_json",
    "stop_run",
    "stream_logs",
    "submit_run",
    "write_app_dir",
]

logger = logging.getLogger("consortia.server")

APP_COMPONENTS = {
    "serverapp": "consortia.server.server_app:app",
    "clientapp": "consortia.client.client_app:app",
}
_CONNECTION = "consortia"


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


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
        *(f"{key} = {_toml_string(value)}" for key, value in APP_COMPONENTS.items()),
        "",
        "[tool.flwr.app.config]",
        f"{rk.RUN_CONFIG_SETTINGS} = {_toml_string(settings.to_json())}",
        f"{rk.RUN_CONFIG_RUN_NAME} = {_toml_string(run_name)}",
    ]
    if resume:
        lines.append(f"{rk.RUN_CONFIG_RESUME} = {_toml_string('true')}")
    if simulation_sites:
        listed = json.dumps([str(path.resolve()) for path in simulation_sites])
        lines.append(f"{rk.RUN_CONFIG_SIMULATION_SITES} = {_toml_string(listed)}")
    lines.append("")
    (dest / "pyproject.toml").write_text("\n".join(lines), encoding="utf-8")
    return dest


@dataclass(frozen=True)
class SuperLinkConnection:
    """How Flower's `flwr` CLI reaches one SuperLink's Control API.

    The `flwr` CLI reads connections from `$FLWR_HOME/config.toml`; each connection gets a
    private FLWR_HOME, so a user's own Flower configuration is never touched.
    """

    address: str
    flwr_home: Path
    insecure: bool = True
    root_certificates: Path | None = None

    @classmethod
    def of(cls, address: str, flwr_home: Path, ca: Path | None) -> SuperLinkConnection:
        """A TLS connection trusting `ca`, or a plaintext one when `ca` is None."""
        if ca is None:
            return cls(address, flwr_home)
        if not ca.is_file():
            raise ConsortiaError(
                f"{ca}: CA certificate not found (needed to verify the server's TLS "
                "certificate; --insecure for a plaintext server)"
            )
        return cls(address, flwr_home, insecure=False, root_certificates=ca.resolve())

    def _env(self) -> dict[str, str]:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        conn = [f"[superlink.{_CONNECTION}]", f"address = {_toml_string(self.address)}"]
        if self.insecure:
            conn.append("insecure = true")
        if self.root_certificates is not None:
            conn.append(f"root-certificates = {_toml_string(str(self.root_certificates))}")
        lines = ["[superlink]", f'default = "{_CONNECTION}"', "", *conn, ""]
        (self.flwr_home / "config.toml").write_text("\n".join(lines), encoding="utf-8")
        return process_env(FLWR_HOME=str(self.flwr_home))

    def flwr(
        self, *args: str, timeout: float | None = None, capture: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `flwr ARGS... <connection>` against this SuperLink."""
        return subprocess.run(
            [str(Path(sys.executable).with_name("flwr")), *args, _CONNECTION],
            capture_output=capture,
            text=True,
            env=self._env(),
            check=False,
            timeout=timeout,
        )


def flwr_json(
    connection: SuperLinkConnection, *args: str, what: str, timeout: float = 120
) -> dict[str, object]:
    """Run `flwr ARGS --format json` and return its JSON answer; `ConsortiaError` saying
    what the SuperLink refused (`what`) when the command fails."""
    result = connection.flwr(*args, "--format", "json", timeout=timeout)
    payload: dict[str, object] = {}
    start = result.stdout.find("{")
    if start >= 0:
        try:
            payload = json.loads(result.stdout[start:])
        except json.JSONDecodeError:
            payload = {}
    if result.returncode != 0 or not payload.get("success"):
        detail = str(payload.get("error-message") or result.stderr or result.stdout).strip()
        detail = detail.split("\n", 1)[-1].strip()[-2000:]  # drop "Using SuperLink: ..."
        raise ConsortiaError(f"the SuperLink at {connection.address} refused {what}: {detail}")
    return payload


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


def stop_run(run_id: int, connection: SuperLinkConnection) -> None:
    """Ask the SuperLink to stop a run (best effort)."""
    connection.flwr("stop", str(run_id), timeout=30)


def stream_logs(run_id: int, connection: SuperLinkConnection) -> None:
    """Show the ServerApp's log lines (round progress) until the run ends."""
    connection.flwr("log", str(run_id), "--stream", capture=False)
