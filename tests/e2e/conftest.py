"""Fixtures of the e2e tests: federations of real processes on 127.0.0.1, started with
`tests.support.federation.start_federation`.

`federation` is a test's own (its server and nodes are the test's to start, stop or
kill). `secured_server` is one secured server without nodes for the whole session: the
tests that only need a server to talk to (the control gate, site registration, refused
nodes) share it, each with site names and folders of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli_federation import CliFederation
from tests.support.federation import SiteSpec, start_federation


@pytest.fixture()
def federation(tmp_path: Path) -> Iterator[CliFederation]:
    """A secured federation in the test's folder, nothing started yet."""
    with start_federation(tmp_path, server=False) as fed:
        yield fed


@pytest.fixture(scope="session")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliFederation]:
    """A running, secured `consortia server start` that no node has joined."""
    with start_federation(tmp_path_factory.mktemp("secured-server")) as fed:
        yield fed


@pytest.fixture(scope="session")
def four_sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliFederation]:
    """A running, secured federation of four training sites "a" to "d" (demo data, runs
    without DP accepted), every node online. Tests share it: each approves its runs
    by the sites it wants (`approved_by`) and reads only its own runs' records."""
    sites = [SiteSpec(name) for name in ("a", "b", "c", "d")]
    with start_federation(tmp_path_factory.mktemp("four-sites"), sites) as fed:
        fed.wait_online(len(sites))
        yield fed
