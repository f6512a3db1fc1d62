"""Registering a site with the coordinator: its public key goes into our site registry
(which the ServerApp uses to check signatures) and into the SuperLink (Flower's SuperNode
authentication, through its Control API), which answers with the site's node id."""

from __future__ import annotations

import logging
from pathlib import Path

from consortia.server.site_registry import RegisteredSite, SiteRegistry
from consortia.server.submit import SuperLinkConnection, flwr_json

__all__ = ["register_site", "unregister_site"]

logger = logging.getLogger("consortia.server")


def register_site(
    registry: SiteRegistry,
    connection: SuperLinkConnection,
    public_key: Path,
    name: str,
    *,
    replace: bool = False,
) -> RegisteredSite:
    """Register `public_key` as site `name` here and with the running SuperLink."""
    entry = registry.register(name, public_key, replace=replace)
    if entry.flower_node_id is not None and not replace:
        logger.info("site %s was already registered (node %d)", name, entry.flower_node_id)
        return entry
    payload = flwr_json(
        connection, "supernode", "register", str(public_key), "--name", name, what="the key"
    )
    node_id = int(str(payload["node-id"]))
    logger.info("site %s registered: node %d, key %s", name, node_id, entry.fingerprint)
    return registry.record_flower_node(name, node_id)


def unregister_site(
    registry: SiteRegistry, connection: SuperLinkConnection, name: str
) -> RegisteredSite:
    """Remove site `name` from the SuperLink (its node can no longer connect) and from
    the registry (its signatures no longer verify)."""
    entry = registry.get(name)
    if entry is not None and entry.flower_node_id is not None:
        flwr_json(
            connection, "supernode", "unregister", str(entry.flower_node_id), what="the removal"
        )
    return registry.unregister(name)
