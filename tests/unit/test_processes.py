"""Process control: children are stopped with their own children, env is safe."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from consortia.common.errors import ConsortiaError
from consortia.common.processes import (
    ManagedProcess,
    ProcessGroup,
    process_env,
    wait_for_address,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); treat it as gone
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def test_env_disables_telemetry_and_finds_flower_scripts() -> None:
    env = process_env(EXTRA="1")
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["EXTRA"] == "1"


def test_group_stops_children_and_grandchildren(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time, pathlib;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(p.pid));"
        "time.sleep(600)"
    )
    with ProcessGroup() as group:
        child = group.start(
            ManagedProcess("sleeper", [sys.executable, "-c", script], tmp_path / "log.txt")
        )
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        grandchild = int(pid_file.read_text())
        assert child.running and _alive(grandchild)
    time.sleep(0.5)
    assert not child.running
    assert not _alive(grandchild)


def test_dead_child_is_reported_with_its_log(tmp_path: Path) -> None:
    with ProcessGroup() as group:
        group.start(
            ManagedProcess(
                "crasher",
                [sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"],
                tmp_path / "crash.log",
            )
        )
        time.sleep(2.0)
        with pytest.raises(ConsortiaError, match=r"crasher exited with code 3(.|\n)*boom"):
            group.check_alive()


def test_wait_for_address_names_the_address() -> None:
    with pytest.raises(ConsortiaError, match=r"nothing answers at 127\.0\.0\.1:1 "):
        wait_for_address("127.0.0.1:1", 0.3)
