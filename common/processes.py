"""Start, watch and stop the long-running processes of a deployment (SuperLink, SuperNodes,
executors) so that nothing is left behind, also on Ctrl-C or an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from consortia.common.errors import ConsortiaError

__all__ = [
    "ManagedProcess",
    "ProcessGroup",
    "free_port",
    "free_ports",
    "process_env",
    "stop_on_sigterm",
    "wait_for_address",
    "wait_for_port",
]

logger = logging.getLogger(__name__)


def process_env(**extra: str) -> dict[str, str]:
    """Environment for a child process: ours, with Flower's telemetry switched off.

    Flower's usage telemetry would send events to an outside server; nothing but model
    updates may leave a hospital, and on a closed network each attempt blocks for up
    to a minute. PATH starts with this interpreter's scripts folder.
    """
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    # Flower starts its helpers (flower-superexec, flwr-serverapp, ...) by name: make the
    # ones installed beside this interpreter win, also when the venv is not activated.
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    env.update(extra)
    return env


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `with ProcessGroup()` blocks stop children.

    Without this a launcher killed by SIGTERM dies at once and leaves its SuperNode or
    SuperLink (each in its own session) running.
    """

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that are free on `host` right now (all held open
    together while they are chosen, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def wait_for_address(address: str, timeout_s: float) -> None:
    """Block until HOST:PORT accepts TCP connections; ConsortiaError after `timeout_s`."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                raise ConsortiaError(
                    f"nothing answers at {address} after {timeout_s:.0f} s ({err}); "
                    "is the server running and the address right?"
                ) from None
            time.sleep(0.25)


def wait_for_port(host: str, port: int, timeout_s: float, process: ManagedProcess) -> None:
    """Block until `host:port` accepts connections; fail early if `process` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.check_alive()
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ConsortiaError(
        f"{process.name} did not open {host}:{port} within {timeout_s:.0f} s; "
        f"see its log: {process.log_path}"
    )


@dataclass
class ManagedProcess:
    """One child process in its own process group, with its output in a log file."""

    name: str
    args: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    # What a line in the log means, for the person at the console (e.g. Flower's exit
    # codes, which its processes print but do not always return).
    log_hints: Mapping[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.popen = subprocess.Popen(
                list(self.args),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,  # own process group: we stop its children too
            )
        logger.debug("started %s (pid %d)", self.name, self.popen.pid)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        """Raise with the tail of the log when the process has exited."""
        if self.popen is None or self.popen.poll() is None:
            return
        tail = self.log_tail(40)
        code = self.popen.returncode
        hint = next((text for marker, text in self.log_hints.items() if marker in tail), None)
        raise ConsortiaError(
            (f"{self.name}: {hint}\n" if hint else "")
            + f"{self.name} exited with code {code}; log {self.log_path}:\n{tail}"
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        """SIGTERM the process group (if the leader still runs)."""
        if self.popen is not None and self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)

    def wait_until(self, deadline: float) -> bool:
        """Wait for the leader to exit until `deadline` (monotonic); True if it did."""
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in time; killing it", self.name)
            return False
        return True

    def kill(self) -> None:
        """SIGKILL whatever is left of the process group: grandchildren (e.g. Flower's
        app processes) may outlive the leader."""
        if self.popen is None:
            return
        _signal_group(self.popen.pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(timeout=5)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is still there after `grace_s`."""
        self.terminate()
        self.wait_until(time.monotonic() + grace_s)
        self.kill()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ProcessGroup:
    """Processes started together and stopped together (in reverse order)."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []

    def start(self, process: ManagedProcess) -> ManagedProcess:
        process.start()
        self.processes.append(process)
        return process

    def check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process (newest first), give them `grace_s` together, then
        SIGKILL what is left: stopping takes seconds, not `grace_s` per process."""
        processes = list(reversed(self.processes))
        for process in processes:
            try:
                process.terminate()
            except Exception:  # keep stopping the others
                logger.exception("could not signal %s", process.name)
        deadline = time.monotonic() + grace_s
        for process in processes:
            try:
                process.wait_until(deadline)
                process.kill()
            except Exception:
                logger.exception("could not stop %s", process.name)
        self.processes.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
