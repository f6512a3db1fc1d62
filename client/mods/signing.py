"""A ClientApp mod that signs every reply with the site's key (the one registered with
the server, `[node] key`): the server accepts an update only with a valid signature over
its content, the run, the round, this node and the nonce it sent with the request."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message

from consortia.client.node.audit import node_audit_for
from consortia.client.site_context import site_settings
from consortia.common.audit.log import EVALUATION_SENT, UPDATE_SENT
from consortia.common.crypto.signing import SignedFields, sign
from consortia.common.crypto.site_keys import load_site_private_key
from consortia.common.networks.device import select_device
from consortia.common.wire import records as rk
from consortia.common.wire.record_digest import record_digest
from consortia.common.wire.record_fields import message_round

__all__ = ["signing_mod"]

logger = logging.getLogger("consortia.client")

Handler = Callable[[Message, Context], Message]


def signing_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Sign the handler's reply; error replies carry no content and stay unsigned."""
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    site = site_settings(context)
    if site.node.key is None:
        return reply  # an insecure node (local experiments): the server may refuse it
    config = msg.content.config_records.get(rk.CONFIG_KEY)
    nonce = config.get(rk.CFG_NONCE) if config is not None else None
    if not isinstance(nonce, str):
        return reply  # the server asked for no signature (an insecure server)
    audit = node_audit_for(site)
    reply.content[rk.NODE_AUDIT_KEY] = ConfigRecord(
        {rk.NODE_AUDIT_HEAD: audit.head, rk.NODE_AUDIT_SEQ: audit.seq}
    )
    fields = SignedFields(
        kind=msg.metadata.message_type.partition(".")[0],
        run_id=str(msg.metadata.run_id),
        round=message_round(msg),
        node_id=context.node_id,
        nonce=nonce,
        site=site.site.name,
        digest=record_digest(reply.content),
    )
    signature = sign(load_site_private_key(site.node.key), fields)
    reply.content[rk.SIGNATURE_KEY] = ConfigRecord(
        {
            rk.SIG_SITE: fields.site,
            rk.SIG_KIND: fields.kind,
            rk.SIG_ROUND: fields.round,
            rk.SIG_NONCE: fields.nonce,
            rk.SIG_DIGEST: fields.digest,
            rk.SIG_SIGNATURE: signature,
        }
    )
    if msg.metadata.message_type in ("train", "evaluate"):
        audit.append(
            UPDATE_SENT if fields.kind == "train" else EVALUATION_SENT,
            flower_run=msg.metadata.run_id,
            round=fields.round,
            sha256=fields.digest,
            device=str(select_device(site.node.device)),
        )
    return reply
