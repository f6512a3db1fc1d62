"""Issue 19, F10: `consortia site register --replace` left the replaced key registered at
the SuperLink (its holder could still connect), and `consortia site unregister` could
then no longer remove it. Against a real `consortia server start` (TLS, site
authentication) and Flower's own `flwr supernode list`: after a replace only the new key
is registered there, and after unregister no key of the site is."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortia.server.control import SuperLinkConnection, flwr_json
from consortia.server.registry.site_admin import register_site, unregister_site
from consortia.server.registry.site_registry import SiteRegistry
from tests.support.cli_federation import CliFederation

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _node_ids(connection: SuperLinkConnection) -> set[int]:
    """The node ids the SuperLink admits (keys with status `registered`), from `flwr
    supernode list` (an unregistered node stays listed, as `unregistered`)."""
    payload = flwr_json(connection, "supernode", "list", what="the node list")
    nodes = payload.get("nodes")
    assert isinstance(nodes, list), payload
    return {int(node["node-id"]) for node in nodes if node["status"] != "unregistered"}


def test_a_replaced_key_is_removed_from_the_superlink(
    tmp_path: Path, secured_server: CliFederation
) -> None:
    consortium = secured_server.consortium
    assert consortium is not None
    connection = consortium.connection(secured_server.control, tmp_path / "flwr-admin")
    registry = SiteRegistry(consortium.security.registry_dir)
    # the shared server's other sites (registered by other tests), left as they are
    others, other_names = _node_ids(connection), registry.names()
    assert "swap" not in other_names
    old = consortium.site_keys("swap", tmp_path / "old")
    new = consortium.site_keys("swap", tmp_path / "new")

    first = register_site(registry, connection, old.public_key, "swap")
    assert first.flower_node_id is not None
    assert _node_ids(connection) == others | {first.flower_node_id}

    replaced = register_site(registry, connection, new.public_key, "swap", replace=True)
    assert replaced.flower_node_id is not None
    # the old key no longer opens the SuperLink; only the new one does
    assert _node_ids(connection) == others | {replaced.flower_node_id}
    assert registry.get("swap") == replaced  # no removal left to retry
    assert replaced.retired_flower_node_ids == ()

    unregister_site(registry, connection, "swap")
    assert _node_ids(connection) == others
    assert registry.names() == other_names
