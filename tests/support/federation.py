"""Test helper: the one way the e2e tests start a federation.

`start_federation(root, sites, secure=...)` starts `consortia server start` and one
`consortia node start` per `SiteSpec` (synthetic demo data unless the spec names a data
set of its own), all real processes on 127.0.0.1, and stops every one of them at the
end. The variations are arguments: a plaintext federation (`secure=False`), a server
alone (no sites), sites added later (`add_sites`). The e2e tests hold one federation per
module or session where their runs can share it (`tests/e2e/conftest.py`).

Sites for Flower's simulation engine are written with `write_simulation_sites` (one
folder of configs). `consortia demo` and `consortia run --simulation` start their own
processes: those commands are what their tests check, so they run as a user runs them
(`tests.support.cli`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.builders import NON_PRIVATE, TomlTable, demo_data, site_toml
from tests.support.cli_federation import CliFederation

__all__ = [
    "SiteSpec",
    "add_sites",
    "start_federation",
    "write_simulation_sites",
    "write_site_configs",
]


@dataclass(frozen=True)
class SiteSpec:
    """One site of a test federation.

    `index` seeds its synthetic demo data (by default its position among the sites
    written together); `data` names a data set of its own instead (a manifest or an
    npz file in the site's folder, relative to it). `privacy` is the site's `[privacy]`
    table (by default it accepts runs without DP), `node` extra `[node]` keys and
    `tables` further tables (e.g. `saliency`)."""

    name: str
    role: str = "train"
    index: int | None = None
    train_cases: int = 16
    test_cases: int = 8
    data: str | None = None
    privacy: TomlTable | None = field(default_factory=lambda: NON_PRIVATE)
    node: TomlTable | None = None
    tables: Mapping[str, TomlTable] | None = None


def write_site_configs(
    federation: CliFederation, sites: Sequence[SiteSpec], folder: Path | None = None
) -> list[Path]:
    """Write each site's data and `site.toml` in `folder/NAME` (by default in the
    federation's root) and return the configs, in order; no node is started."""
    configs = []
    for position, spec in enumerate(sites):
        site_dir = (folder or federation.root) / spec.name
        site_dir.mkdir(parents=True, exist_ok=True)
        data = spec.data
        if data is None:
            data = "data.npz"
            index = position if spec.index is None else spec.index
            demo_data(
                site_dir / data, index, train_cases=spec.train_cases, test_cases=spec.test_cases
            )
        configs.append(
            federation.site_config(
                site_dir,
                spec.name,
                role=spec.role,
                data=data,
                node=spec.node,
                privacy=spec.privacy,
                tables=spec.tables,
            )
        )
    return configs


def write_simulation_sites(folder: Path, sites: Sequence[SiteSpec]) -> list[Path]:
    """Sites for Flower's simulation engine (`consortia run --simulation FOLDER`):
    `NAME.toml` and `NAME.npz` in `folder`, each node's state in `folder/state-NAME`."""
    folder.mkdir(parents=True, exist_ok=True)
    configs = []
    for position, spec in enumerate(sites):
        data = spec.data
        if data is None:
            data = f"{spec.name}.npz"
            index = position if spec.index is None else spec.index
            demo_data(
                folder / data, index, train_cases=spec.train_cases, test_cases=spec.test_cases
            )
        config = folder / f"{spec.name}.toml"
        node = {"state_dir": f"state-{spec.name}", **(spec.node or {})}
        text = site_toml(
            spec.name,
            role=spec.role,
            data=data,
            node=node,
            privacy=spec.privacy,
            tables=spec.tables,
        )
        config.write_text(text, encoding="utf-8")
        configs.append(config)
    return configs


def add_sites(
    federation: CliFederation, sites: Sequence[SiteSpec], folder: Path | None = None
) -> list[Path]:
    """Write the sites (`write_site_configs`), register their keys with the running
    server and start their nodes; returns their configs."""
    configs = write_site_configs(federation, sites, folder)
    federation.start_nodes(configs)
    return configs


@contextmanager
def start_federation(
    root: Path, sites: Sequence[SiteSpec] = (), *, secure: bool = True, server: bool = True
) -> Iterator[CliFederation]:
    """A federation in `root`: its server (unless `server` is False: started later by
    the test) and a node per site; every process is stopped on exit.

    Secured (the default) as a consortium runs it: a CA and server certificate, TLS,
    a registered key pair per site and every site approving each run."""
    federation = CliFederation(root, secure=secure)
    try:
        if server:
            federation.start_server()
        if sites:
            add_sites(federation, sites)
        yield federation
    finally:
        federation.stop()
