"""A hospital's node: a Flower SuperNode (process isolation) plus our warm executor.

With the warm executor the SuperNode runs as ``python -m consortia.client.node.supernode``:
Flower's own ``flower-supernode`` entry point, unchanged, except that its Fleet client's
``PullObject`` waits out objects the ServerApp is still uploading (`ObjectPull`, a poll
every 50 ms) instead of Flower's object-pull backoff from 1 s. The SuperLink shows a
message to the SuperNodes before its objects are uploaded, so a SuperNode that polls in
that window would otherwise receive its task a second or more late. With
``executor = "subprocess"`` the node is plain Flower (``flower-supernode``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flwr.supercore.exit.exit_code import ExitCode

from consortia.common.config.settings import SiteSettings
from consortia.common.errors import ConsortiaError
from consortia.common.processes import ManagedProcess, ProcessGroup, process_env, wait_for_port
from consortia.common.wire import records as rk
from consortia.common.wire.object_pull import ObjectPull

__all__ = ["default_state_dir", "main", "run_node", "start_node_processes", "supernode_args"]

SUPERNODE_MODULE = "consortia.client.node.supernode"
# How often the SuperNode asks the SuperLink again for an object still being uploaded.
FLEET_OBJECT_POLL_S = 0.05

# After a crash, the server keeps a node "online" until it misses two heartbeats (Flower:
# 2 x 30 s) and refuses to activate it again before; a restarted node retries this long.
REJOIN_WINDOW_S = 90.0
REJOIN_RETRY_S = 5.0
STABLE_AFTER_S = 15.0  # a node up this long was let in: remember it for rejoins
ACTIVATED_FILE = "activated"

logger = logging.getLogger("consortia.client.node.supernode")

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
    if site.node.executor == "warm":
        launcher = [sys.executable, "-m", SUPERNODE_MODULE]
    else:
        launcher = [str(Path(sys.executable).with_name("flower-supernode"))]
    args = [
        *launcher,
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
        "consortia.client.node.warm_executor",
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


def supervise(
    group: ProcessGroup, poll_s: float = 1.0, on_stable: Callable[[], None] | None = None
) -> None:
    """Block until a process of the node exits (an error) or Ctrl-C; `on_stable` is
    called once the node has run `STABLE_AFTER_S` seconds."""
    stable_at = time.monotonic() + STABLE_AFTER_S
    while True:
        group.check_alive()
        if on_stable is not None and time.monotonic() > stable_at:
            on_stable()
            on_stable = None
        time.sleep(poll_s)


def run_node(
    site: SiteSettings,
    site_config: Path,
    *,
    runtime_port: int | None = None,
    num_threads: int | None = None,
) -> None:
    """Start and supervise the node until Ctrl-C or a failure. A node that was let in
    before and is refused right after a restart (the server still counts its previous
    session as connected) retries for up to `REJOIN_WINDOW_S`; a key that was never let
    in fails at once."""
    marker = default_state_dir(site) / ACTIVATED_FILE
    refused = f"Exit Code: {ExitCode.SUPERNODE_CONNECTION_ERROR}"
    deadline = time.monotonic() + REJOIN_WINDOW_S

    def remember() -> None:
        marker.write_text(site.node.superlink, encoding="utf-8")

    while True:
        with ProcessGroup() as group:
            start_node_processes(
                group, site, site_config, runtime_port=runtime_port, num_threads=num_threads
            )
            try:
                supervise(group, on_stable=remember)
                return
            except ConsortiaError as err:
                address = marker.read_text(encoding="utf-8") if marker.is_file() else ""
                known = address == site.node.superlink
                if not known or refused not in str(err) or time.monotonic() > deadline:
                    raise
        logger.warning(
            "the server does not let this node in yet: it still counts the node's session "
            "from before this restart as connected (until two heartbeats are missed, about "
            "a minute); retrying in %.0f s",
            REJOIN_RETRY_S,
        )
        time.sleep(REJOIN_RETRY_S)


def main() -> None:
    """Flower's ``flower-supernode`` (its own arguments), with object pulls from the
    SuperLink that wait out uploads still in progress."""
    from flwr.supernode.cli import flower_supernode
    from flwr.supernode.fleet_http_client import FleetHttpClient

    ObjectPull.wrap_class(FleetHttpClient, poll_s=FLEET_OBJECT_POLL_S)
    flower_supernode()


if __name__ == "__main__":
    main()
