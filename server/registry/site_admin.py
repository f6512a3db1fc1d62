"""Registering a site with the coordinator: its public key goes into our site registry
(which the ServerApp uses to check signatures) and into the SuperLink (Flower's SuperNode
authentication, through its Control API), which answers with the site's node id."""

from __future__ import annotations

import logging
from pathlib import Path

from consortia.server.control import SuperLinkConnection, flwr_json
from consortia.server.registry.site_registry import RegisteredSite, SiteRegistry

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
    """Register `public_key` as site `name` here and with the running SuperLink. With
    `replace`, the replaced key's node is removed from the SuperLink first (issue 19, F10);
    a removal that failed earlier is retried by the next register or unregister."""
    entry = registry.register(name, public_key, replace=replace)
    entry = _remove_retired_nodes(registry, connection, entry)
    if entry.flower_node_id is not None:
        logger.info("site %s was already registered (node %d)", name, entry.flower_node_id)
        return entry
    payload = flwr_json(
        connection, "supernode", "register", str(public_key), "--name", name, what="the key"
    )
    node_id = int(str(payload["node-id"]))
    logger.info("site %s registered: node %d, key %s", name, node_id, entry.fingerprint)
    return registry.record_flower_node(name, node_id)


def _remove_retired_nodes(
    registry: SiteRegistry, connection: SuperLinkConnection, entry: RegisteredSite
) -> RegisteredSite:
    """Unregister the nodes of the site's replaced keys at the SuperLink, one by one,
    noting each removal in the registry (so that a failure can be retried)."""
    for node_id in entry.retired_flower_node_ids:
        flwr_json(
            connection, "supernode", "unregister", str(node_id), what="the replaced key's removal"
        )
        logger.info("site %s: the replaced key's node %d removed", entry.name, node_id)
        entry = registry.forget_retired_node(entry.name, node_id)
    return entry


def unregister_site(
    registry: SiteRegistry, connection: SuperLinkConnection, name: str
) -> RegisteredSite:
    """Remove site `name` from the SuperLink (its node, and those of keys it replaced,
    can no longer connect) and from the registry (its signatures no longer verify)."""
    entry = registry.get(name)
    if entry is not None:
        entry = _remove_retired_nodes(registry, connection, entry)
    if entry is not None and entry.flower_node_id is not None:
        flwr_json(
            connection, "supernode", "unregister", str(entry.flower_node_id), what="the removal"
        )
    return registry.unregister(name)
