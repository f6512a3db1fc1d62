"""The coordinator's Flower SuperLink process, behind Consortia's gate.

`consortia.server.launch.superlink_gate` runs Flower's SuperLink app with the Fleet API on the
public listener only and the Control/Runtime APIs on a loopback listener; this module
builds its command line and starts it as a managed process.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from consortia.common.audit.log import AUDIT_LOG_FILE
from consortia.common.processes import ManagedProcess, ProcessGroup, process_env, wait_for_port
from consortia.server.registry.server_security import ServerSecurity

__all__ = [
    "CONTROL_HOST",
    "DEFAULT_CONTROL_PORT",
    "DEFAULT_FLEET_PORT",
    "RUNS_DIR_ENV",
    "SuperLinkEndpoints",
    "start_superlink",
    "superlink_args",
]

#: Where the ServerApps that this SuperLink starts write their run folders.
RUNS_DIR_ENV = "CONSORTIA_RUNS_DIR"
#: The Control/Runtime listener is on loopback only: the server machine's own processes.
CONTROL_HOST = "127.0.0.1"
DEFAULT_FLEET_PORT = 9092
DEFAULT_CONTROL_PORT = 9093


@dataclass(frozen=True)
class SuperLinkEndpoints:
    """Where a started SuperLink answers: `fleet` for the sites (None in simulation),
    `control` for the coordinator's commands on the server machine."""

    fleet: str | None
    control: str
    process: ManagedProcess


def superlink_args(
    host: str | None,
    port: int | None,
    control_port: int,
    *,
    security: ServerSecurity | None,
    database: Path | None,
    audit_log: Path | None = None,
    simulation: bool = False,
    allow_app_code: bool = False,
) -> list[str]:
    """Command line of the gated SuperLink. The Fleet API listens on `host:port` (none
    with `host` None); Control and Runtime on 127.0.0.1:`control_port` only. Runtime
    dependency installation is always off: it would download a CUDA build of torch into
    every run. With `security`, every listener speaks TLS and only SuperNodes whose keys
    were registered may connect. `allow_app_code` skips the app check: research harnesses
    that run their own apps only, never `consortia server start`."""
    args = [sys.executable, "-m", "consortia.server.launch.superlink_gate"]
    if host is not None and port is not None:
        args += ["--fleet-host", host, "--fleet-port", str(port)]
    if audit_log is not None:
        args += ["--audit-log", str(audit_log)]
    if allow_app_code:
        args.append("--allow-app-code")
    args += [
        "--",
        "--host",
        CONTROL_HOST,
        "--port",
        str(control_port),
        "--disable-runtime-dependency-installation",
    ]
    if security is None:
        args.append("--insecure")
    elif not simulation:
        args += [
            "--ssl-ca-certfile",
            str(security.ca),
            "--ssl-certfile",
            str(security.certificate),
            "--ssl-keyfile",
            str(security.key),
            "--enable-supernode-auth",
        ]
    if database is not None:
        args += ["--database", str(database)]
    if simulation:
        args.append("--simulation")
    return args


def start_superlink(
    group: ProcessGroup,
    state_dir: Path,
    runs_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_FLEET_PORT,
    control_port: int = DEFAULT_CONTROL_PORT,
    security: ServerSecurity | None = None,
    simulation: bool = False,
    allow_app_code: bool = False,
    startup_timeout_s: float = 60.0,
) -> SuperLinkEndpoints:
    """Start a SuperLink whose ServerApps write run folders under `runs_dir`. In
    simulation there are no sites to reach it: only the loopback listener on `port`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    extra = {RUNS_DIR_ENV: str(runs_dir.resolve())}
    if security is not None:
        extra |= security.check().env()
    env = process_env(FLWR_HOME=str(state_dir / "flwr"), **extra)
    if simulation:
        control_port = port
    process = group.start(
        ManagedProcess(
            "SuperLink",
            superlink_args(
                None if simulation else host,
                None if simulation else port,
                control_port,
                security=security,
                database=state_dir / "superlink.db",
                audit_log=state_dir / AUDIT_LOG_FILE,
                simulation=simulation,
                allow_app_code=allow_app_code,
            ),
            state_dir / "logs" / "superlink.log",
            env=env,
        )
    )
    wait_for_port(CONTROL_HOST, control_port, startup_timeout_s, process)
    fleet = None
    if not simulation:
        reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        wait_for_port(reach, port, startup_timeout_s, process)
        fleet = f"{host}:{port}"
    return SuperLinkEndpoints(fleet, f"{CONTROL_HOST}:{control_port}", process)
