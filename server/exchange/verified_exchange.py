"""Message exchange with the sites in which every reply is signature-checked and audited.

Each request gets a fresh nonce; each reply is recorded in the run's audit log as
received (with the SHA-256 of its content) and then verified or rejected (a reply that
cannot even be read is rejected too: one site must not stop the run). A rejected
reply is dropped as if the site had not answered, with the reason kept for the results.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

from flwr.app import Message
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

from consortia.common.audit.log import UPDATE_RECEIVED, UPDATE_REJECTED, UPDATE_VERIFIED
from consortia.common.crypto.signing import SignatureError
from consortia.common.wire import records as rk
from consortia.common.wire.record_digest import record_digest
from consortia.common.wire.record_fields import message_round
from consortia.server.exchange.messaging import Quorum, exchange
from consortia.server.exchange.reply_verifier import ReplyVerifier
from consortia.server.run.folder import RunFolder

__all__ = ["VerifiedExchange"]

logger = logging.getLogger("consortia.server")


class VerifiedExchange:
    """Sends messages over the Grid and keeps only replies whose signatures verify."""

    def __init__(
        self,
        grid: Grid,
        folder: RunFolder,
        verifier: ReplyVerifier,
        *,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.grid = grid
        self.folder = folder
        self.verifier = verifier
        self.poll_interval_s = poll_interval_s
        # Why each node's reply was dropped in the last exchange.
        self.rejected: dict[int, str] = {}
        self.names: dict[int, str] = {}
        # The latest head of each site's own audit log, from its signed replies.
        self.node_audit_heads: dict[str, str] = {}
        # Bytes the sites uploaded (serialised replies), by round.
        self.upload_bytes: dict[int, int] = defaultdict(int)

    def _who(self, node_id: int) -> str:
        return self.names.get(node_id, f"node {node_id}")

    def _reject(self, node_id: int, who: str, reason: str, where: dict[str, object]) -> None:
        self.rejected[node_id] = reason
        logger.warning("%s rejected: %s", who, reason)
        self.folder.event(UPDATE_REJECTED, site=who, reason=reason, **where)

    def __call__(
        self,
        messages: Sequence[Message],
        timeout_s: float,
        on_reply: Callable[[int, Message], None] | None = None,
        quorum: Quorum | None = None,
    ) -> dict[int, Message]:
        """Push `messages`, pull replies until all came or `timeout_s`; returns the
        replies that are error answers or verified updates."""
        for message in messages:
            self.verifier.stamp(message)
        requests = {message.metadata.dst_node_id: message for message in messages}
        replies = exchange(
            self.grid,
            messages,
            timeout_s,
            poll_interval_s=self.poll_interval_s,
            on_reply=on_reply,
            quorum=quorum,
        )
        self.rejected = {}
        kept: dict[int, Message] = {}
        for node_id, reply in replies.items():
            request = requests[node_id]
            kind = request.metadata.message_type
            if reply.has_error():
                kept[node_id] = reply
                continue
            self.upload_bytes[message_round(request)] += recorddict_to_proto(
                reply.content
            ).ByteSize()
            where = {"round": message_round(request), "kind": kind, "node_id": node_id}
            who = self._who(node_id)
            try:
                digest = record_digest(reply.content)
            except SignatureError as err:
                self._reject(node_id, who, str(err), where)
                continue
            self.folder.event(UPDATE_RECEIVED, site=who, sha256=digest, **where)
            if not self.verifier.enabled:
                kept[node_id] = reply
                continue
            try:
                verified = self.verifier.verify(request, reply, digest)
            except SignatureError as err:
                self._reject(node_id, who, str(err), where)
                continue
            except Exception as err:  # a malformed reply must not stop the run
                self._reject(node_id, who, f"unreadable reply: {err}", where)
                continue
            self.folder.event(UPDATE_VERIFIED, site=verified.site, sha256=verified.digest, **where)
            node_audit = reply.content.config_records.get(rk.NODE_AUDIT_KEY)
            head = node_audit.get(rk.NODE_AUDIT_HEAD) if node_audit is not None else None
            if isinstance(head, str):
                self.node_audit_heads[verified.site] = head
            kept[node_id] = reply
        return kept
