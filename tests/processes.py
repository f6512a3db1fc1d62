"""Test helper: the Flower/Consortia processes running on this machine right now."""

from __future__ import annotations

import subprocess

MARKERS = ("flower-super", "warm_executor", "flwr-serverapp", "flwr-clientapp", "flwr-simulation")


def flower_processes() -> set[str]:
    """Command lines (with pids) of every process a federation may leave behind."""
    result = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return {line.strip() for line in result.stdout.splitlines() if any(m in line for m in MARKERS)}
