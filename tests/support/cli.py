"""Test helper: the `consortia` command line, run as a user runs it (a subprocess of the
installed CLI under this interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

__all__ = ["CLI", "consortia", "output_of"]

CLI: Final = [sys.executable, "-m", "consortia.common.cli"]


def consortia(*args: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run `consortia ARGS...` to its end; its exit status is the caller's to check."""
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    """What a finished command printed, stdout then stderr."""
    return result.stdout + result.stderr
