"""Signed replies: a fresh nonce on every message out, a signature check on every reply in.

A reply counts only when it is signed by the key registered for the node that sent it,
over its exact content, this run, its round, that node and the nonce sent with the
request; a nonce is accepted once (no replays). Without a site registry (a server
started with --insecure) nothing is stamped or checked.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Message

from consortia.common.crypto.signing import (
    ReplayGuard,
    SignatureError,
    SignedFields,
    new_nonce,
    verify,
)
from consortia.common.wire import records as rk
from consortia.common.wire.record_digest import record_digest
from consortia.common.wire.record_fields import RecordFieldError, get_config_record, message_round
from consortia.server.registry.site_registry import SiteRegistry, SiteRegistryError

__all__ = ["ReplyVerifier", "VerifiedReply", "signer_of"]

logger = logging.getLogger("consortia.server")

_Key = tuple[int, str, str]


def _key(message: Message) -> _Key:
    meta = message.metadata
    return (meta.dst_node_id, meta.message_type, meta.group_id)


def signer_of(reply: Message) -> str | None:
    """The site a reply says signed it (checked by `ReplyVerifier.verify`)."""
    record = reply.content.config_records.get(rk.SIGNATURE_KEY)
    value = record.get(rk.SIG_SITE) if record is not None else None
    return value if isinstance(value, str) else None


class VerifiedReply:
    """Who signed a reply (the registered site) and the digest of what it signed."""

    def __init__(self, site: str, digest: str) -> None:
        self.site = site
        self.digest = digest


class ReplyVerifier:
    """Stamps requests with nonces and checks the signatures of their replies."""

    def __init__(self, registry: SiteRegistry | None, run_id: int) -> None:
        self.registry = registry
        self.run_id = str(run_id)
        self._guard = ReplayGuard(self.run_id)
        self._nonces: dict[_Key, str] = {}

    @property
    def enabled(self) -> bool:
        return self.registry is not None

    def stamp(self, message: Message) -> None:
        """Give `message` its own copy of its config record with a fresh nonce."""
        if self.registry is None:
            return
        config = message.content.config_records.get(rk.CONFIG_KEY)
        stamped = ConfigRecord(dict(config.items()) if config is not None else {})
        nonce = new_nonce()
        stamped[rk.CFG_NONCE] = nonce
        message.content[rk.CONFIG_KEY] = stamped
        self._nonces[_key(message)] = nonce

    def _registered_name(self, node_id: int, claimed: str) -> str:
        if self.registry is None:
            raise SignatureError("no site registry")
        by_node = [s for s in self.registry.sites() if s.flower_node_id == node_id]
        if by_node:
            name = by_node[0].name
            if claimed != name:
                raise SignatureError(
                    f"node {node_id} is registered as site {name!r} but signed as {claimed!r}"
                )
            return name
        entry = self.registry.get(claimed)
        if entry is None:
            raise SignatureError(f"site {claimed!r} (node {node_id}) is not registered")
        if entry.flower_node_id is not None and entry.flower_node_id != node_id:
            raise SignatureError(
                f"site {claimed!r} is registered as node {entry.flower_node_id}, "
                f"but node {node_id} signed as it"
            )
        return claimed

    def verify(self, request: Message, reply: Message, digest: str | None = None) -> VerifiedReply:
        """The registered signer of `reply`; raises `SignatureError` saying why not.
        `digest`: the reply's `record_digest`, when the caller computed it already."""
        if self.registry is None:
            raise SignatureError("signature checks are off on this server")
        node_id = request.metadata.dst_node_id
        expected = self._nonces.pop(_key(request), None)
        if expected is None:
            raise SignatureError(f"node {node_id}: no nonce was sent with this request")
        if rk.SIGNATURE_KEY not in reply.content:
            raise SignatureError(f"reply of node {node_id} is not signed")
        try:
            record = get_config_record(reply.content, rk.SIGNATURE_KEY)
            claimed = str(record.get(rk.SIG_SITE, ""))
            signature = record.get(rk.SIG_SIGNATURE)
            claimed_round = record.get(rk.SIG_ROUND)
            fields = SignedFields(
                kind=request.metadata.message_type.partition(".")[0],
                run_id=self.run_id,
                round=claimed_round if isinstance(claimed_round, int) else -1,
                node_id=node_id,
                nonce=str(record.get(rk.SIG_NONCE, "")),
                site=self._registered_name(node_id, claimed),
                digest=digest or record_digest(reply.content),
            )
            public_key = self.registry.public_key(fields.site)
        except (RecordFieldError, SiteRegistryError) as err:
            raise SignatureError(f"reply of node {node_id}: {err}") from None
        if not isinstance(signature, bytes):
            raise SignatureError(f"{fields.describe()} carries no signature bytes")
        verify(public_key, fields, signature)
        self._guard.check(fields, expected)
        round_number = message_round(request)
        if fields.round != round_number:
            raise SignatureError(
                f"{fields.describe()}: signed for round {fields.round}, not {round_number}"
            )
        return VerifiedReply(fields.site, fields.digest)
