"""Secure aggregation bound to the study's roster (issue 19, F2, F6, F12).

The approved run config carries the study's roster (`[[run.sites]]`: each site's name,
key fingerprint and role). Three things follow from it, all decided at the site from
the approved config, never from what the server says:

- **Mandatory secure aggregation (F6).** `secure_required`: in mode "on", or in mode
  "auto" when the roster lists at least `min_sites` training sites per round (and the
  run's strategy and privacy allow secure aggregation), a site refuses a plain train
  message: the server cannot skip secure aggregation by never starting a session.
- **Signed session keys (F2).** A site signs its two session public keys with the key it
  registered (the one that signs its updates, `consortia.common.crypto.site_keys`), naming its
  site, its Flower node id, the approved config and the session's parameters
  (`sign_session_keys`). The signature travels in the key advertisement the site
  already sends: no extra message exchange. Each site checks every neighbour's
  signature against the roster's fingerprint for the named site
  (`verify_session_keys`), so the server cannot slip its own nodes (Sybils) into a
  session, and counts the distinct roster members it masks with (`session_minimum`).
- **Bounded sessions (F12).** `max_session_sites`: a session may not name more sites
  than the roster's training sites (or `MAX_SESSION_SITES` without a roster), checked
  before any graph is built.

Without a roster none of the signatures can be checked against anything the site
trusts, so no rule at the site can tell a server-run node from a real site. Hence
(`roster_refusal`): in mode "on" (the approved config demands secure aggregation) a
site joins no session unless the roster lists at least two training sites; it then also
refuses plain updates (`secure_required`), so such a study cannot train at all. In mode
"auto" without a roster a session still hides the updates from a server that follows
the protocol, and a server that does not could equally ask for plain updates (F6), so the
site takes part and says so in its log (docs/secure-aggregation.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from consortia.common.config.settings import Role, RunSettings
from consortia.common.crypto.site_keys import public_key_fingerprint
from consortia.common.secure_aggregation.config import MAX_PARTICIPANTS, SecAggConfig, SecAggError

__all__ = [
    "MAX_SESSION_SITES",
    "SESSION_KEYS_DOMAIN",
    "KeyAdvert",
    "max_session_sites",
    "roster_refusal",
    "roster_trainers",
    "secure_required",
    "session_minimum",
    "sign_session_keys",
    "verify_session_keys",
]

SESSION_KEYS_DOMAIN = b"consortia.secagg-keys/1\n"
"""Prefix of every signed key advertisement: never taken for a signed update."""

MAX_SESSION_SITES = MAX_PARTICIPANTS
"""Most sites a session may name without a roster."""

_SIGNATURE = ec.ECDSA(hashes.SHA384())
_MAX_SITE_KEY_BYTES = 1024
_MAX_SIGNATURE_BYTES = 256


def roster_trainers(settings: RunSettings) -> int:
    """How many training sites the study's roster lists (0 without a roster)."""
    return sum(entry.role is Role.TRAIN for entry in settings.sites)


def secure_required(settings: RunSettings) -> bool:
    """Whether the approved run makes secure aggregation mandatory at the site: mode
    "on", or mode "auto" with a roster whose training sites per round reach the
    secure-aggregation `min_sites` (and a strategy and privacy that allow it). The same
    rule the server applies to the sites that joined, applied to the approved roster."""
    secure = settings.secure_aggregation
    if secure.mode == "on":
        return True
    trainers = roster_trainers(settings)
    if secure.mode == "off" or not trainers:
        return False
    per_round = min(settings.sites_per_round or trainers, trainers)
    return settings.secure_aggregation_for(per_round)


def roster_refusal(settings: RunSettings) -> str | None:
    """Why this site joins no secure-aggregation session of the approved run, or None:
    mode "on" demands secure aggregation, which against a server that runs nodes of its
    own (Sybils, F2) holds only when every neighbour is checked against a roster of at
    least two training sites."""
    if settings.secure_aggregation.mode != "on":
        return None
    trainers = roster_trainers(settings)
    if trainers >= 2:
        return None
    return (
        f'the approved run sets secure_aggregation.mode = "on" with {trainers} training '
        "site(s) in its roster ([[run.sites]]); without a roster of at least 2 this site "
        "cannot tell other sites from nodes the server runs, so it joins no secure session"
    )


def session_minimum(settings: RunSettings) -> int:
    """The fewest distinct sites a session (and a site's group in a round) must hold:
    the secure-aggregation minimum (`min_sites` in mode "auto", 2 in mode "on"), raised
    with a roster to the run's `min_sites` (at most the roster's training sites)."""
    secure = settings.secure_aggregation
    minimum = secure.min_sites if secure.mode == "auto" else 2
    trainers = roster_trainers(settings)
    if trainers:
        minimum = max(minimum, min(settings.min_sites, trainers))
    return minimum


def max_session_sites(settings: RunSettings) -> int:
    """The most sites a session of this run may name: the roster's training sites, or
    `MAX_SESSION_SITES` without a roster."""
    return roster_trainers(settings) or MAX_SESSION_SITES


@dataclass(frozen=True)
class KeyAdvert:
    """A site's signature over its session public keys: its name, its registered public
    key (OpenSSH line, as `<name>.pub` holds it) and the DER ECDSA-SHA384 signature."""

    site: str
    site_key: bytes
    signature: bytes

    def check_shape(self, source: str) -> None:
        """Refuse malformed fields, naming `source` and the field."""
        if not isinstance(self.site, str) or not self.site or len(self.site) > 64:
            raise SecAggError(f"key advertisement of {source}: 'site' must be a site name")
        for name, value, most in (
            ("site_key", self.site_key, _MAX_SITE_KEY_BYTES),
            ("signature", self.signature, _MAX_SIGNATURE_BYTES),
        ):
            if not isinstance(value, bytes) or not 0 < len(value) <= most:
                raise SecAggError(
                    f"key advertisement of {source}: '{name}' must be 1 to {most} bytes"
                )


def _payload(
    config_hash: str, config: SecAggConfig, node_id: int, site: str, keys: Mapping[str, bytes]
) -> bytes:
    session = json.dumps(config.to_config(), sort_keys=True, separators=(",", ":"))
    body = {
        "config_hash": config_hash,
        "session_config": hashlib.sha256(session.encode("utf-8")).hexdigest(),
        "node_id": node_id,
        "site": site,
        "pk_c": keys["c"].hex(),
        "pk_s": keys["s"].hex(),
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return SESSION_KEYS_DOMAIN + text.encode("ascii")


def sign_session_keys(
    private_key: ec.EllipticCurvePrivateKey,
    *,
    config_hash: str,
    config: SecAggConfig,
    node_id: int,
    site: str,
    keys: Mapping[str, bytes],
) -> KeyAdvert:
    """Sign this site's session public keys (`{"c": ..., "s": ...}`) for `node_id` in
    the session `config` of the approved run `config_hash`."""
    site_key = private_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    signature = private_key.sign(_payload(config_hash, config, node_id, site, keys), _SIGNATURE)
    return KeyAdvert(site=site, site_key=site_key, signature=signature)


def verify_session_keys(
    advert: KeyAdvert | None,
    settings: RunSettings,
    *,
    config_hash: str,
    config: SecAggConfig,
    node_id: int,
    keys: Mapping[str, bytes],
) -> str:
    """The roster site whose registered key signed node `node_id`'s session keys in this
    session; raises `SecAggError` naming the node and the problem when it is unsigned,
    signed by a key the roster does not list under that name, by a site the roster does
    not list as a training site, or for another session, node or run."""
    source = f"node {node_id}"
    if advert is None:
        raise SecAggError(
            f"the session keys of {source} are not signed by a site of the study's roster"
        )
    advert.check_shape(source)
    entry = settings.roster.get(advert.site)
    if entry is None:
        raise SecAggError(f"{source} claims site {advert.site!r}, not in the study's roster")
    if entry.role is not Role.TRAIN:
        raise SecAggError(
            f"{source} claims site {advert.site!r}, which the roster lists as {entry.role.value}"
        )
    try:
        public = serialization.load_ssh_public_key(advert.site_key)
    except (ValueError, UnsupportedAlgorithm):
        raise SecAggError(
            f"key advertisement of {source}: 'site_key' is not a public key"
        ) from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SecAggError(f"key advertisement of {source}: 'site_key' is not an ECDSA key")
    fingerprint = public_key_fingerprint(public)
    if fingerprint != entry.fingerprint:
        raise SecAggError(
            f"{source} claims site {advert.site!r} with key {fingerprint}; the roster lists "
            f"{entry.fingerprint}"
        )
    payload = _payload(config_hash, config, node_id, advert.site, keys)
    try:
        public.verify(advert.signature, payload, _SIGNATURE)
    except InvalidSignature:
        raise SecAggError(
            f"the signature of {source} (site {advert.site!r}) over its session keys does not "
            "verify (other keys, session, node or run)"
        ) from None
    return advert.site
