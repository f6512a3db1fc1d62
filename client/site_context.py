"""Which site a ClientApp invocation serves: its site config, from Flower's context."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context

from consortia.common.config.settings import SiteSettings, load_site_settings
from consortia.common.errors import ConsortiaError
from consortia.common.wire import records as rk

__all__ = ["is_simulated", "site_config_path", "site_settings"]


def is_simulated(context: Context) -> bool:
    """True under Flower's simulation engine (the coordinator runs every site itself)."""
    path = context.node_config.get(rk.NODE_CONFIG_SITE_CONFIG)
    return not (isinstance(path, str) and path)


def site_config_path(context: Context) -> Path:
    """The site config: from the SuperNode's node config, or, under Flower's simulation
    engine, the run's list of simulated sites indexed by the node's partition id."""
    path = context.node_config.get(rk.NODE_CONFIG_SITE_CONFIG)
    if isinstance(path, str) and path:
        return Path(path)
    partition = context.node_config.get(rk.NODE_CONFIG_PARTITION_ID)
    listed = context.run_config.get(rk.RUN_CONFIG_SIMULATION_SITES)
    if partition is not None and isinstance(listed, str) and listed:
        sites = json.loads(listed)
        index = int(partition)
        if not 0 <= index < len(sites):
            raise ConsortiaError(f"simulated node {index} has no site ({len(sites)} listed)")
        return Path(sites[index])
    raise ConsortiaError(f"node config has no '{rk.NODE_CONFIG_SITE_CONFIG}'")


def site_settings(context: Context) -> SiteSettings:
    """The validated site config of this node."""
    return load_site_settings(site_config_path(context))
