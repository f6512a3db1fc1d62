"""Test helper: the Flower/Consortia processes running on this machine right now."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

MARKERS = ("flower-super", "warm_executor", "flwr-serverapp", "flwr-clientapp", "flwr-simulation")
# Set in the environment of a command a test starts; every process it starts inherits it, so
# a test can tell its own processes from those of a test running beside it (pytest -n 2).
TAG_ENV = "CONSORTIA_TEST_TAG"


def tagged_env(tag: str) -> dict[str, str]:
    """This process's environment with `tag` marking every process started from it."""
    return {**os.environ, TAG_ENV: tag}


def _has_tag(pid: str, tag: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False
    return f"{TAG_ENV}={tag}".encode() in environ


def flower_processes(tag: str | None = None) -> set[str]:
    """Command lines (with pids) of every live process a federation may leave behind
    (with `tag`: only those started under `tagged_env(tag)`).

    Zombies (state Z: exited, not yet reaped by their new parent) are not counted: they
    run nothing and hold no port or file."""
    result = subprocess.run(
        ["ps", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True
    )
    live = set()
    for line in result.stdout.splitlines()[1:]:
        pid, stat, args = [*line.strip().split(None, 2), "", ""][:3]
        if stat.startswith("Z") or not any(m in args for m in MARKERS):
            continue
        if tag is None or _has_tag(pid, tag):
            live.add(f"{pid} {args}")
    return live


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant at once, as a crash or `kill -9` would."""
    for member in process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
