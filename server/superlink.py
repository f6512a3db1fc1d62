"""The coordinator's Flower SuperLink process."""

from __future__ import annotations

import sys
from pathlib import Path

from consortia.common.processes import ManagedProcess, ProcessGroup, process_env, wait_for_port
from consortia.server.server_security import ServerSecurity

__all__ = ["RUNS_DIR_ENV", "start_superlink", "superlink_args"]

#: Where the ServerApps that this SuperLink starts write their run folders.
RUNS_DIR_ENV = "CONSORTIA_RUNS_DIR"


def superlink_args(
    host: str,
    port: int,
    *,
    security: ServerSecurity | None,
    database: Path | None,
    simulation: bool = False,
) -> list[str]:
    """Command line of `flower-superlink` (runtime dependency installation always off:
    it would download a CUDA build of torch into every run). With `security`, every API
    speaks TLS and only SuperNodes whose keys were registered may connect."""
    args = [
        str(Path(sys.executable).with_name("flower-superlink")),
        "--host",
        host,
        "--port",
        str(port),
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
    port: int = 9092,
    security: ServerSecurity | None = None,
    simulation: bool = False,
    startup_timeout_s: float = 60.0,
) -> ManagedProcess:
    """Start a SuperLink whose ServerApps write run folders under `runs_dir`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    extra = {RUNS_DIR_ENV: str(runs_dir.resolve())}
    if security is not None:
        extra |= security.check().env()
    env = process_env(FLWR_HOME=str(state_dir / "flwr"), **extra)
    process = group.start(
        ManagedProcess(
            "SuperLink",
            superlink_args(
                host,
                port,
                security=security,
                database=state_dir / "superlink.db",
                simulation=simulation,
            ),
            state_dir / "logs" / "superlink.log",
            env=env,
        )
    )
    wait_for_port(
        "127.0.0.1" if host in ("0.0.0.0", "::") else host, port, startup_timeout_s, process
    )
    return process
