"""A hospital's node: a Flower SuperNode (process isolation) plus our warm executor."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from flwr.supercore.exit.exit_code import ExitCode

from consortia.common import records as rk
from consortia.common.processes import ManagedProcess, ProcessGroup, process_env, wait_for_port
from consortia.common.settings import SiteSettings

__all__ = ["default_state_dir", "start_node_processes", "supernode_args"]

logger = logging.getLogger("consortia.client.node")

# Flower's exit codes (flwr.common.exit.ExitCode) that a hospital's IT team meets.
SUPERNODE_LOG_HINTS = {
    f"Exit Code: {ExitCode.SUPERNODE_CONNECTION_ERROR}": (
        "the server did not accept this node: most often its key is not registered there "
        "(the coordinator runs `consortia site register SITE.pub`), or node.key is not the "
        "registered key's private half; the server's log names the refused key"
    ),
    f"Exit Code: {ExitCode.SUPERNODE_NODE_AUTH_KEY_INVALID}": (
        "node.key cannot be read as the site's EC private key in OpenSSH format "
        "(consortia certs site NAME)"
    ),
}


def default_state_dir(site: SiteSettings) -> Path:
    """Where the node keeps Flower's state and its logs unless the site config says."""
    return site.state_path


def supernode_args(site: SiteSettings, site_config: Path, runtime_port: int) -> list[str]:
    """Command line of the Flower SuperNode for this site."""
    args = [
        str(Path(sys.executable).with_name("flower-supernode")),
        "--superlink",
        site.node.superlink,
        "--isolation",
        "process" if site.node.executor == "warm" else "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(runtime_port),
        "--node-config",
        f'{rk.NODE_CONFIG_SITE_CONFIG}="{site_config.resolve()}"',
    ]
    if site.node.insecure:
        args.append("--insecure")
    else:
        args += [
            "--root-certificates",
            str(site.node.root_certificates),
            "--auth-supernode-private-key",
            str(site.node.key),
        ]
    return args


def start_node_processes(
    group: ProcessGroup,
    site: SiteSettings,
    site_config: Path,
    *,
    runtime_port: int | None = None,
    num_threads: int | None = None,
    startup_timeout_s: float = 60.0,
) -> Path:
    """Start the SuperNode and the executor in `group`; returns the node's log folder."""
    state_dir = default_state_dir(site)
    log_dir = state_dir / "logs"
    port = runtime_port or site.node.runtime_port
    env = process_env(FLWR_HOME=str(state_dir / "flwr"))
    if num_threads:
        env["CONSORTIA_NUM_THREADS"] = str(num_threads)
        env["OMP_NUM_THREADS"] = str(num_threads)
    supernode = group.start(
        ManagedProcess(
            f"SuperNode {site.site.name}",
            supernode_args(site, site_config, port),
            log_dir / "supernode.log",
            env=env,
            log_hints=SUPERNODE_LOG_HINTS,
        )
    )
    wait_for_port("127.0.0.1", port, startup_timeout_s, supernode)
    if site.node.executor == "subprocess":
        logger.info("node %s started with Flower's subprocess isolation", site.site.name)
        return log_dir
    executor_args = [
        sys.executable,
        "-m",
        "consortia.client.warm_executor",
        "--runtime-api-address",
        f"127.0.0.1:{port}",
    ]
    # The executor talks to its own SuperNode on 127.0.0.1 only (Flower's local,
    # plain-HTTP ClientAppIo API); the SuperNode holds the TLS link to the server.
    executor_args.append("--insecure")
    group.start(
        ManagedProcess(
            f"executor {site.site.name}", executor_args, log_dir / "executor.log", env=env
        )
    )
    logger.info("node %s started (%s); logs in %s", site.site.name, site.site.role, log_dir)
    return log_dir


def supervise(group: ProcessGroup, poll_s: float = 1.0) -> None:
    """Block until a process of the node exits (an error) or Ctrl-C."""
    while True:
        group.check_alive()
        time.sleep(poll_s)
