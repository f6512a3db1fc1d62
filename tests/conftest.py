"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_federation import CliFederation


@pytest.fixture()
def federation(tmp_path: Path) -> Iterator[CliFederation]:
    """A federation driven through the CLI; every process is stopped afterwards."""
    fed = CliFederation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop()
