"""Shared pytest fixtures (the e2e tests' federations are in tests/e2e/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity


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


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """A real, minimal insecure site config "a" with a state folder (the approval mod and
    the secure-aggregation handlers read its approvals, state and key)."""
    np.savez(tmp_path / "data.npz", x=np.zeros(1))
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nname = "a"\n[data]\npath = "data.npz"\n[node]\ninsecure = true\n'
        'state_dir = "state"\n',
        encoding="utf-8",
    )
    return config
