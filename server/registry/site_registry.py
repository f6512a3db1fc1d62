"""The sites the coordinator knows by key: one OpenSSH public key per site name.

The registry is a folder (by default `<server state>/sites/`) holding `<name>.pub` for
every registered site and `registry.json`, the index:

    {"format": "consortia.site-registry/1",
     "sites": {"hospital-a": {"fingerprint": "SHA256:...", "registered_at": "...Z",
                              "flower_node_id": null}}}

A key belongs to one site and a site has one key: registering a second key for a name, or
a key already registered under another name, is refused (`replace=True` replaces a site's
key; a key is never shared between two names). A replaced key's Flower node id is kept
in `retired_flower_node_ids` until it is removed from the SuperLink too (`site_admin`), so
that no replaced key stays registered there unseen. Every change is written atomically, and
the index is read from disk on every call, so a server sees sites registered while it
runs and the registry survives restarts. One writer at a time (the coordinator's CLI).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from consortia.common.config.names import InvalidNameError, check_site_name
from consortia.common.crypto.pki_files import PKIError
from consortia.common.crypto.site_keys import (
    SITE_KEY_COMMENT_PREFIX,
    load_site_public_key,
    public_key_comment,
    public_key_fingerprint,
)
from consortia.common.errors import ConsortiaError
from consortia.common.files import write_json_atomic, write_text_atomic

__all__ = [
    "REGISTRY_FILE",
    "RegisteredSite",
    "SiteRegistry",
    "SiteRegistryError",
    "UnknownSiteError",
    "site_name_from_public_key",
]

REGISTRY_FILE = "registry.json"
_FORMAT = "consortia.site-registry/1"


class SiteRegistryError(ConsortiaError):
    """The registry refuses a change (a name or key already taken) or is unreadable."""


class UnknownSiteError(SiteRegistryError):
    """No key is registered for a site name."""


@dataclass(frozen=True)
class RegisteredSite:
    """One registry entry."""

    name: str
    fingerprint: str
    registered_at: datetime
    public_key_path: Path
    flower_node_id: int | None = None
    # Node ids of replaced keys that the SuperLink may still admit (to unregister there).
    retired_flower_node_ids: tuple[int, ...] = ()


def site_name_from_public_key(public_key_path: Path) -> str:
    """The site name a `.pub` file names in its comment (`consortia-site:NAME`), else
    the file name without `.pub`."""
    comment = public_key_comment(public_key_path)
    if comment.startswith(SITE_KEY_COMMENT_PREFIX):
        return comment.removeprefix(SITE_KEY_COMMENT_PREFIX)
    return public_key_path.name.removesuffix(".pub")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class SiteRegistry:
    """The registry in folder `path` (created on the first registration)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index_path = path / REGISTRY_FILE

    # -- reading -----------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        if not self.index_path.exists():
            return {}
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SiteRegistryError(
                f"{self.index_path}: cannot read the site registry ({err})"
            ) from None
        sites = data.get("sites") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("format") != _FORMAT
            or not isinstance(sites, dict)
        ):
            raise SiteRegistryError(
                f"{self.index_path}: not a Consortia site registry (expected format {_FORMAT})"
            )
        return sites

    def _entry(self, name: str, raw: Any) -> RegisteredSite:
        try:
            node = raw.get("flower_node_id")
            retired = raw.get("retired_flower_node_ids", [])
            if not isinstance(retired, list):
                raise TypeError("retired_flower_node_ids must be a list")
            return RegisteredSite(
                name=check_site_name(name),
                fingerprint=str(raw["fingerprint"]),
                registered_at=datetime.fromisoformat(str(raw["registered_at"])),
                public_key_path=self.path / f"{name}.pub",
                flower_node_id=None if node is None else int(node),
                retired_flower_node_ids=tuple(int(value) for value in retired),
            )
        except (AttributeError, KeyError, TypeError, ValueError, InvalidNameError) as err:
            raise SiteRegistryError(
                f"{self.index_path}: the entry of site {name!r} is damaged ({err!r})"
            ) from None

    def sites(self) -> list[RegisteredSite]:
        """Every registered site, by name."""
        return [self._entry(name, raw) for name, raw in sorted(self._load().items())]

    def names(self) -> list[str]:
        """The registered site names, sorted."""
        return sorted(self._load())

    def get(self, name: str) -> RegisteredSite | None:
        """The entry of site `name`, or None."""
        raw = self._load().get(name)
        return None if raw is None else self._entry(name, raw)

    def find(self, fingerprint: str) -> RegisteredSite | None:
        """The site registered with the key of this fingerprint, or None."""
        return next((site for site in self.sites() if site.fingerprint == fingerprint), None)

    def public_key(self, name: str) -> ec.EllipticCurvePublicKey:
        """The registered public key of site `name` (UnknownSiteError when there is none;
        SiteRegistryError when its file changed after registration)."""
        site = self.get(name)
        if site is None:
            raise UnknownSiteError(
                f"site {name!r} is not registered with this server (consortia site register "
                f"{name}.pub, with the public key the site made with `consortia certs site`)"
            )
        try:
            key = load_site_public_key(site.public_key_path)
        except PKIError as err:
            raise SiteRegistryError(f"site {name!r}: {err}") from None
        found = public_key_fingerprint(key)
        if found != site.fingerprint:
            raise SiteRegistryError(
                f"{site.public_key_path}: changed after registration (key {found}, registered "
                f"{site.fingerprint}); register the site's key again with --replace"
            )
        return key

    # -- changing ----------------------------------------------------------------------

    def _save(self, sites: dict[str, dict[str, Any]]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.index_path, {"format": _FORMAT, "sites": dict(sorted(sites.items()))}
        )

    def register(
        self, name: str, public_key_path: Path, *, replace: bool = False
    ) -> RegisteredSite:
        """Register the OpenSSH public key in `public_key_path` for site `name`.

        Registering the same key again for the same name changes nothing. Refused: a key
        that names another site in its comment, a second key for `name` (unless
        `replace`), and a key registered under another name (always: unregister it there).
        """
        try:
            check_site_name(name)
        except InvalidNameError as err:
            raise SiteRegistryError(str(err)) from None
        key = load_site_public_key(public_key_path)
        comment = public_key_comment(public_key_path)
        if comment.startswith(SITE_KEY_COMMENT_PREFIX) and comment != (
            SITE_KEY_COMMENT_PREFIX + name
        ):
            raise SiteRegistryError(
                f"{public_key_path}: this key was made for site "
                f"{comment.removeprefix(SITE_KEY_COMMENT_PREFIX)!r}, not {name!r}"
            )
        fingerprint = public_key_fingerprint(key)
        sites = self._load()
        for other, raw in sites.items():
            if other != name and raw.get("fingerprint") == fingerprint:
                raise SiteRegistryError(
                    f"{public_key_path}: key {fingerprint} is already registered for site "
                    f"{other!r}; every site needs its own key (consortia certs site {name})"
                )
        current = sites.get(name)
        if current is not None:
            if current.get("fingerprint") == fingerprint:
                return self._entry(name, current)
            if not replace:
                raise SiteRegistryError(
                    f"site {name!r} is already registered with another key "
                    f"({current.get('fingerprint')}); pass --replace to replace it"
                )
        line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            self.path / f"{name}.pub", f"{line.decode('ascii')} {SITE_KEY_COMMENT_PREFIX}{name}\n"
        )
        retired: list[int] = []
        if current is not None:  # a replaced key: its node must leave the SuperLink too
            retired = [int(value) for value in current.get("retired_flower_node_ids", [])]
            if current.get("flower_node_id") is not None:
                retired.append(int(current["flower_node_id"]))
        sites[name] = {
            "fingerprint": fingerprint,
            "registered_at": _stamp(datetime.now(UTC)),
            "flower_node_id": None,
            "retired_flower_node_ids": sorted(set(retired)),
        }
        self._save(sites)
        return self._entry(name, sites[name])

    def forget_retired_node(self, name: str, node_id: int) -> RegisteredSite:
        """Note that the replaced key's node `node_id` was removed from the SuperLink."""
        sites = self._load()
        if name not in sites:
            raise UnknownSiteError(f"site {name!r} is not registered with this server")
        retired = [int(v) for v in sites[name].get("retired_flower_node_ids", [])]
        sites[name] = {
            **sites[name],
            "retired_flower_node_ids": [v for v in retired if v != node_id],
        }
        self._save(sites)
        return self._entry(name, sites[name])

    def record_flower_node(self, name: str, node_id: int) -> RegisteredSite:
        """Note the node id Flower gave the site's key (`flwr supernode register`)."""
        sites = self._load()
        if name not in sites:
            raise UnknownSiteError(f"site {name!r} is not registered with this server")
        sites[name] = {**sites[name], "flower_node_id": int(node_id)}
        self._save(sites)
        return self._entry(name, sites[name])

    def unregister(self, name: str) -> RegisteredSite:
        """Remove site `name` and its key copy; its updates are refused from now on."""
        sites = self._load()
        if name not in sites:
            raise UnknownSiteError(f"site {name!r} is not registered with this server")
        removed = self._entry(name, sites.pop(name))
        self._save(sites)
        removed.public_key_path.unlink(missing_ok=True)
        return removed
