"""A study's roster (`[[run.sites]]`): which sites take part, with which keys and roles.

The roster is part of the approved run config, so its hash is what every site approved.
A site does not take the server's word for who takes part: it refuses work in a run whose
roster does not list it with its own key and role (`own_entry_refusal`), and the server
asks only the nodes whose registered key matches a roster entry (`roster_node_ids`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from consortia.common.config.settings import Role, RosterEntry, RunSettings

__all__ = ["admitted_by_roster", "own_entry_refusal", "roster_node_ids", "site_fingerprint"]


def site_fingerprint(key: Path | None) -> str | None:
    """The `SHA256:...` fingerprint of a site's key file (None without a key)."""
    if key is None:
        return None
    from consortia.common.crypto.site_keys import load_site_private_key, public_key_fingerprint

    return public_key_fingerprint(load_site_private_key(key))


def own_entry_refusal(
    settings: RunSettings, name: str, role: Role, fingerprint: str | None
) -> str | None:
    """Why this site refuses the run because of its roster, or None (no roster, or the
    roster lists this site with this key and role)."""
    if not settings.sites:
        return None
    entry = settings.roster.get(name)
    if entry is None:
        return f"the study's roster does not list this site ({name})"
    if fingerprint is None:
        return "the study has a roster of keys, but this site has no key (node.key)"
    if entry.fingerprint != fingerprint:
        return (
            f"the study's roster lists {name} with key {entry.fingerprint}, not this site's "
            f"key {fingerprint}"
        )
    if entry.role is not role:
        return f"the study's roster lists {name} as {entry.role.value}, this site is {role.value}"
    return None


def admitted_by_roster(settings: RunSettings, name: str, role: Role) -> str | None:
    """Why the server leaves out a site that answered as `name` with `role`, or None."""
    if not settings.sites:
        return None
    entry = settings.roster.get(name)
    if entry is None:
        return f"{name} is not in the study's roster"
    if entry.role is not role:
        return f"{name} answered as {role.value}, the roster lists it as {entry.role.value}"
    return None


def roster_node_ids(
    roster: Iterable[RosterEntry], registered: Iterable[tuple[str, str, int | None]]
) -> set[int]:
    """The Flower node ids of registered sites (name, fingerprint, node id) whose name and
    key fingerprint match a roster entry: the only nodes the server may ask."""
    wanted = {(entry.name, entry.fingerprint) for entry in roster}
    return {
        node_id
        for name, fingerprint, node_id in registered
        if node_id is not None and (name, fingerprint) in wanted
    }
