"""Flower object-pull backoffs in kept benchmark runs, read from Flower's debug logs.

Run a benchmark with ``FLWR_LOG_LEVEL=DEBUG`` (Flower then logs every Runtime and Fleet
request with a millisecond timestamp) and ``--keep DIR``, then::

    python -m tests.benchmarks.pull_backoffs DIR --out backoffs.json

Flower's ``pull_objects`` sleeps 1 s (then 2 s, 4 s, ... with 20 % jitter) whenever an
object is registered but not yet stored. Flower logs no line for that sleep; it shows as a
silent gap between two requests of the same puller. Per run folder this counts:

- ``child_backoffs``: ClientApp tasks (race 1: the SuperNode makes a task acquirable before
  it stored the message's objects): within one task (``Runtime.PullTaskInput`` ..
  ``Runtime.ConfirmMessageReceived`` in the SuperNode's log), a ``Runtime.PullObject``
  at least `GAP_S` after the task's previous ``Runtime.PullObject``;
- ``server_backoffs``: the ServerApp (race 2: the SuperLink shows a reply before its
  objects are uploaded): in the SuperLink's log, a ``Runtime.PullObject`` at least `GAP_S`
  after a ``Runtime.PullObject`` with no other Runtime request between;
- ``supernode_slow_receives``: a SuperNode's own pull of a message from the SuperLink
  (``Receiving`` .. ``Received successfully``) that took at least `GAP_S`; its objects
  come from the ServerApp's upload, which the SuperNode can also overtake.

The gaps are a heuristic: a process starved of CPU also leaves gaps, so compare runs made
under the same load (``--baseline-src``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

__all__ = ["GAP_S", "RunBackoffs", "main", "run_backoffs"]

logger = logging.getLogger("consortia.benchmarks")

GAP_S = 0.7  # Flower's first backoff is 0.8-1.2 s
LINE = re.compile(
    r"(?:DEBUG|INFO|WARNING|ERROR)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\S*:\s+(.*)"
)
COLOUR = re.compile(r"\x1b\[[0-9;]*m")
PULL_OBJECT = "Runtime.PullObject"
RUNTIME = "Runtime."


@dataclass
class RunBackoffs:
    """What one run's logs show."""

    rounds: int
    tasks: int = 0
    child_backoffs: int = 0
    child_backoff_s: float = 0.0
    server_backoffs: int = 0
    server_backoff_s: float = 0.0
    supernode_slow_receives: int = 0
    receive_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        out = asdict(self)
        receive = out.pop("receive_s")
        out["supernode_receive_s_mean"] = round(statistics.mean(receive), 3) if receive else 0
        for key in ("child_backoff_s", "server_backoff_s"):
            out[key] = round(out[key], 2)
        return out


def _events(path: Path) -> Iterator[tuple[datetime, str]]:
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = LINE.search(COLOUR.sub("", line))
        if match:
            yield datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f"), match.group(2)


def _read_node(path: Path, into: RunBackoffs) -> None:
    task_start: datetime | None = None
    last_pull: datetime | None = None
    receiving: datetime | None = None
    for at, message in _events(path):
        if message.startswith("Receiving:"):
            receiving = at
        elif message.startswith("Received successfully") and receiving is not None:
            seconds = (at - receiving).total_seconds()
            into.receive_s.append(seconds)
            into.supernode_slow_receives += seconds >= GAP_S
            receiving = None
        elif message.startswith("Runtime.PullTaskInput"):
            task_start, last_pull = at, None
        elif message.startswith(PULL_OBJECT) and task_start is not None:
            if last_pull is not None and (gap := (at - last_pull).total_seconds()) >= GAP_S:
                into.child_backoffs += 1
                into.child_backoff_s += gap
            last_pull = at
        elif message.startswith("Runtime.ConfirmMessageReceived") and task_start is not None:
            into.tasks += 1
            task_start = None


def _read_superlink(path: Path, into: RunBackoffs) -> None:
    last_pull: datetime | None = None
    for at, message in _events(path):
        if not message.startswith(RUNTIME):
            continue
        pull = message.startswith(PULL_OBJECT)
        if pull and last_pull is not None and (gap := (at - last_pull).total_seconds()) >= GAP_S:
            into.server_backoffs += 1
            into.server_backoff_s += gap
        last_pull = at if pull else None


def run_backoffs(run_dir: Path) -> RunBackoffs:
    """Backoffs in the logs of one kept run folder (with ``results.json`` and ``workspace``)."""
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    found = RunBackoffs(rounds=sum(1 for entry in results["rounds"] if entry["round"] >= 1))
    workspace = run_dir / "workspace"
    for log in sorted(workspace.glob("sites/*/node/logs/supernode.log")):
        _read_node(log, found)
    _read_superlink(workspace / "superlink" / "logs" / "superlink.log", found)
    return found


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: every kept run folder under the given folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("pull_backoffs.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    report = {
        str(results.parent): run_backoffs(results.parent).summary()
        for folder in args.folders
        for results in sorted(folder.glob("**/results.json"))
        if (results.parent / "workspace").is_dir()
    }
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    logger.info("%s", json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
