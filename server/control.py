"""The coordinator's connection to a SuperLink's Control API, through Flower's own `flwr` CLI.

Used to submit and stop runs, stream their logs and manage nodes; each connection keeps a
private `FLWR_HOME`, so a user's own Flower configuration is never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from consortia.common.errors import ConsortiaError
from consortia.common.processes import process_env

__all__ = ["SuperLinkConnection", "flwr_json", "stop_run", "stream_logs", "toml_string"]

_CONNECTION = "consortia"


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


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
        conn = [f"[superlink.{_CONNECTION}]", f"address = {toml_string(self.address)}"]
        if self.insecure:
            conn.append("insecure = true")
        if self.root_certificates is not None:
            conn.append(f"root-certificates = {toml_string(str(self.root_certificates))}")
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


def stop_run(run_id: int, connection: SuperLinkConnection) -> None:
    """Ask the SuperLink to stop a run (best effort)."""
    connection.flwr("stop", str(run_id), timeout=30)


def stream_logs(run_id: int, connection: SuperLinkConnection) -> None:
    """Show the ServerApp's log lines (round progress) until the run ends."""
    connection.flwr("log", str(run_id), "--stream", capture=False)
