"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

from tests.cli_federation import CliFederation


@pytest.fixture()
def federation(tmp_path: Path) -> Iterator[CliFederation]:
    """A federation driven through the CLI; every process is stopped afterwards."""
    fed = CliFederation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop()


@pytest.fixture()
def server_task_identity() -> Iterator[None]:
    """What Flower's runtime sets in a ServerApp process before messages exist, so that
    tests can build real request and reply messages."""
    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = 31
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous
