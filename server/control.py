"""The coordinator's connection to a SuperLink's Control API, through Flower's own `flwr` CLI.

Used to submit and stop runs, stream their logs and manage nodes; each connection keeps a
private `FLWR_HOME`, so a user's own Flower configuration is never touched.

A stop says who and why through a stop request (`STOP_REQUEST_FILE`) written into the run
folder before `flwr stop`: Flower ends the ServerApp with SIGINT and carries no reason, so
the ServerApp takes the reason from that file (`take_stop_reason`) when it records the run
as `stopped`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from consortia.common.errors import ConsortiaError
from consortia.common.files import write_json_atomic
from consortia.common.logs import utc_now
from consortia.common.processes import process_env

__all__ = [
    "CTRL_C_REASON",
    "STOP_REQUEST_FILE",
    "UNREQUESTED_STOP_REASON",
    "SuperLinkConnection",
    "flwr_json",
    "node_status",
    "request_stop",
    "show_logs",
    "stop_run",
    "stream_logs",
    "take_stop_reason",
    "toml_string",
]

_CONNECTION = "consortia"
#: The run folder's note of a requested stop: `{"reason": ..., "at": ...}`.
STOP_REQUEST_FILE: Final = "stop-request.json"
CTRL_C_REASON: Final = "stopped by the coordinator (Ctrl-C)"
#: The reason recorded when the ServerApp was ended without a stop request (a plain
#: `flwr stop`, or the server shutting down).
UNREQUESTED_STOP_REASON: Final = "stopped on the server (flwr stop or server shutdown)"


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


def _write_stop_request(run_dir: Path, reason: str) -> Path:
    note = run_dir / STOP_REQUEST_FILE
    write_json_atomic(note, {"reason": reason, "at": utc_now()})
    return note


def stop_run(
    run_id: int,
    connection: SuperLinkConnection,
    *,
    run_dir: Path | None = None,
    reason: str = CTRL_C_REASON,
) -> None:
    """Ask the SuperLink to stop a run (best effort); with the run's folder (where this
    machine sees it), the ServerApp records `reason` with the stop."""
    if run_dir is not None and run_dir.is_dir():
        _write_stop_request(run_dir, reason)
    connection.flwr("stop", str(run_id), timeout=30)


def request_stop(run_id: int, connection: SuperLinkConnection, run_dir: Path, reason: str) -> None:
    """Stop a run, `reason` saying who and why; `ConsortiaError` when the SuperLink
    refuses (the request is then withdrawn)."""
    note = _write_stop_request(run_dir, reason)
    try:
        flwr_json(connection, "stop", str(run_id), what=f"stopping Flower run {run_id}", timeout=60)
    except BaseException:
        note.unlink(missing_ok=True)
        raise


def take_stop_reason(run_dir: Path) -> str:
    """The reason of the stop requested for the run in `run_dir`, the request removed (a
    resumed run starts without one); `UNREQUESTED_STOP_REASON` when none was written."""
    note = run_dir / STOP_REQUEST_FILE
    reason = UNREQUESTED_STOP_REASON
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        reason = str(json.loads(note.read_text(encoding="utf-8")).get("reason") or reason)
    note.unlink(missing_ok=True)
    return reason


def stream_logs(run_id: int, connection: SuperLinkConnection) -> None:
    """Show the ServerApp's log lines (round progress) until the run ends."""
    connection.flwr("log", str(run_id), "--stream", capture=False)


def show_logs(run_id: int, connection: SuperLinkConnection, *, follow: bool = False) -> int:
    """Print the ServerApp's log of a run (as the SuperLink keeps it) and, with `follow`,
    go on until the run ends; returns `flwr log`'s exit status."""
    mode = "--stream" if follow else "--show"
    return connection.flwr("log", str(run_id), mode, capture=False).returncode


def node_status(connection: SuperLinkConnection) -> dict[int, tuple[str, str | None]]:
    """Flower node id -> (status, last seen in UTC ISO 8601) of every SuperNode the
    SuperLink knows: `online` since, or `offline` / `registered` with when it was last
    online (None if never)."""
    payload = flwr_json(connection, "supernode", "list", what="the node list", timeout=60)
    nodes = payload.get("nodes")
    status: dict[int, tuple[str, str | None]] = {}
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, dict):
            continue
        with contextlib.suppress(KeyError, TypeError, ValueError):
            state = str(node["status"])
            seen = node.get("online-at") if state == "online" else node.get("offline-at")
            status[int(str(node["node-id"]))] = (state, str(seen) if seen else None)
    return status
