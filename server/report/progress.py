"""Live progress of a run on the console, read from the run folder's audit log
(`audit.jsonl`), and its final tables, read from the typed run record."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from consortia.common.audit.log import RUN_FAILED, RUN_FINISHED, RUN_RESUMED
from consortia.common.audit.provenance import PROVENANCE_FILE
from consortia.common.config.settings import Role, Task
from consortia.common.errors import ConsortiaError
from consortia.server.control import SuperLinkConnection, stop_run
from consortia.server.run.folder import EVENTS_FILE, read_record
from consortia.server.run.record import Evaluation, RunRecord

__all__ = [
    "RunProgress",
    "final_table",
    "follow_run",
    "headline_metric",
    "privacy_table",
    "watch_run",
]

_TERMINAL = {RUN_FINISHED, RUN_FAILED}
# The server writes the signed provenance just after the run's last audit record.
_PROVENANCE_WAIT_S = 30.0


def headline_metric(task: Task) -> str:
    """The one metric the tables show: Dice for segmentation, AUC for classification."""
    return "dice" if task is Task.SEGMENTATION else "auc"


@dataclass
class RunProgress:
    """State folded from the events seen so far."""

    rounds: int
    round: int = 0
    site_state: dict[str, str] = field(default_factory=dict)
    holdout: dict[int, float | None] = field(default_factory=dict)
    finished: str | None = None
    reason: str | None = None

    def apply(self, event: dict[str, Any], metric: str) -> None:
        kind = event.get("event")
        site = event.get("site")
        if kind == "site_joined" and site:
            self.site_state[site] = f"joined ({event.get('role')})"
        elif kind == "round_started":
            self.round = int(event["round"])
        elif kind == "sent" and site:
            self.site_state[site] = "training" if event.get("kind") == "train" else "evaluating"
        elif kind == "replied" and site:
            self.site_state[site] = "done"
        elif kind == "failed" and site:
            self.site_state[site] = f"failed: {event.get('reason')}"
        elif kind == "evaluated":
            holdout = event.get("holdout") or {}
            self.holdout[int(event["round"])] = holdout.get(metric)
        elif kind == RUN_RESUMED:  # a resumed run goes on after its earlier end
            self.finished = self.reason = None
        elif kind in _TERMINAL:
            self.finished = kind
            self.reason = event.get("reason")


def _render(progress: RunProgress, started: float, metric: str) -> Group:
    elapsed = time.monotonic() - started
    current = min(progress.round, progress.rounds)
    title = Text(f"round {current}/{progress.rounds}   elapsed {elapsed:5.0f} s", style="bold")
    table = Table(show_header=True, header_style="bold")
    table.add_column("site")
    table.add_column("status")
    for site, state in sorted(progress.site_state.items()):
        table.add_row(site, state)
    lines: list[Any] = [title, table]
    if progress.holdout:
        last = max(progress.holdout)
        value = progress.holdout[last]
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(Text(f"held-out {metric} of the model after round {last}: {shown}"))
    return Group(*lines)


@contextlib.contextmanager
def _deferred_interrupts() -> Iterator[threading.Event]:
    """Turn Ctrl-C/SIGTERM into a flag while the live display runs: an exception raised
    asynchronously inside Rich's locked rendering could leave its lock held and hang the
    display's shutdown. The caller checks the flag at a safe point instead."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _signum, _frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def follow_run(
    run_dir: Path,
    rounds: int,
    task: Task,
    *,
    console: Console,
    check_alive: Callable[[], None] | None = None,
    timeout_s: float = 24 * 3600.0,
) -> RunProgress:
    """Show live progress until the run ends; raise if it failed or a process died."""
    metric = headline_metric(task)
    progress = RunProgress(rounds=rounds)
    events_path = run_dir / EVENTS_FILE
    position = 0
    started = time.monotonic()
    with (
        _deferred_interrupts() as interrupted,
        Live(
            _render(progress, started, metric),
            console=console,
            refresh_per_second=4,
            transient=False,
        ) as live,
    ):
        while progress.finished is None and not interrupted.is_set():
            if time.monotonic() - started > timeout_s:
                raise ConsortiaError(f"run did not finish within {timeout_s:.0f} s")
            if check_alive is not None:
                check_alive()
            if events_path.exists():
                with events_path.open("r", encoding="utf-8") as handle:
                    handle.seek(position)
                    for line in handle:
                        if not line.endswith("\n"):
                            break  # partial line: read it next time
                        position += len(line.encode("utf-8"))
                        progress.apply(json.loads(line), metric)
            live.update(_render(progress, started, metric))
            interrupted.wait(0.25)
    if interrupted.is_set():
        raise KeyboardInterrupt
    deadline = time.monotonic() + _PROVENANCE_WAIT_S
    while not (run_dir / PROVENANCE_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if progress.finished == RUN_FAILED:
        raise ConsortiaError(f"the run failed: {progress.reason}")
    return progress


def final_table(record: RunRecord) -> Table:
    """Per round: the held-out metric and each site's metric of that round's model."""
    metric = headline_metric(Task(str(record.task)))
    roles = record.roles()
    sites = sorted(roles, key=lambda name: (roles[name] != Role.TRAIN.value, name))
    table = Table(title=f"{metric.upper()} of the global model after each round")
    table.add_column("round", justify="right")
    table.add_column(f"held-out {metric}", justify="right", style="bold")
    for name in sites:
        table.add_column(f"{name} ({roles[name]})", justify="right")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{float(value):.3f}"

    for entry in record.rounds:
        evaluation = entry.evaluation or Evaluation()
        holdout = (evaluation.holdout or {}).get(metric)
        row = [str(entry.round), fmt(holdout)]
        row += [fmt(evaluation.sites.get(name, {}).get(metric)) for name in sites]
        table.add_row(*row)
    return table


def privacy_table(record: RunRecord) -> Table | None:
    """Per training site: the privacy spent (this run and in total) against its limit."""
    privacy = record.privacy
    if privacy is None or not privacy.sample_level.enabled or not privacy.sites:
        return None
    table = Table(title="Differential privacy per training site (sample-level DP-SGD)")
    for column in ("site", "epsilon this run", "epsilon total", "limit", "delta", "status"):
        table.add_column(column, justify="left" if column in ("site", "status") else "right")
    run_epsilon: dict[str, float] = {}
    for entry in record.rounds:
        for name, spent in (entry.privacy or {}).items():
            run_epsilon[name] = spent.run_epsilon
    for name, site in sorted(privacy.sites.items()):
        total = site.epsilon if site.epsilon is not None else site.epsilon_before_run
        table.add_row(
            name,
            f"{run_epsilon.get(name, 0.0):.3f}",
            "-" if total is None else f"{total:.3f}",
            f"{site.max_epsilon:g}",
            f"{site.delta:g}",
            f"left training: {site.excluded}" if site.excluded else "ok",
        )
    return table


def watch_run(
    run_id: int,
    connection: SuperLinkConnection,
    run_dir: Path,
    rounds: int,
    task: Task,
    *,
    console: Console,
    check_alive: Callable[[], None] | None = None,
    timeout_s: float = 24 * 3600.0,
) -> dict[str, Any]:
    """Follow a submitted run to its end and print the final table; Ctrl-C also stops the
    run on the SuperLink. Returns the run's results."""
    try:
        follow_run(
            run_dir, rounds, task, console=console, check_alive=check_alive, timeout_s=timeout_s
        )
    except KeyboardInterrupt:
        stop_run(run_id, connection, run_dir=run_dir)
        raise
    record = read_record(run_dir)
    console.print(final_table(record))
    privacy = privacy_table(record)
    if privacy is not None:
        console.print(privacy)
    if record.ended_early:
        console.print(f"[yellow]Training ended early:[/] {record.ended_early}")
    return record.to_json()
