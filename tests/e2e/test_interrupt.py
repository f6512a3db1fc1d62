"""Ctrl-C during `consortia demo` stops the run and every process the demo started."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from consortia.server.run.folder import EVENTS_FILE
from tests.support.cli import CLI
from tests.support.processes import flower_processes, tagged_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
INTERRUPT_TAG = f"interrupt-{uuid.uuid4().hex}"


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    before = flower_processes(INTERRUPT_TAG)
    demo = subprocess.Popen(
        [
            *CLI,
            "demo",
            "--rounds",
            "50",
            "--sites",
            "3",
            "--output",
            str(tmp_path),
            "--image-size",
            "32",
            "--cases",
            "24",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=tagged_env(INTERRUPT_TAG),
    )
    deadline = time.monotonic() + 300
    started = False
    while time.monotonic() < deadline and demo.poll() is None:
        events = list(tmp_path.glob(f"demo-*/{EVENTS_FILE}"))
        if events and '"round_started"' in events[0].read_text():
            started = True
            break
        time.sleep(0.5)
    assert started, "the demo never started a round"
    demo.send_signal(signal.SIGINT)
    output, _ = demo.communicate(timeout=120)
    assert demo.returncode == 130, output.decode()[-2000:]
    assert b"stopping every demo process" in output
    time.sleep(1.0)
    assert flower_processes(INTERRUPT_TAG) <= before, "Flower processes survived Ctrl-C"
