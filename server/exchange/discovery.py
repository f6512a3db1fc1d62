"""Asking nodes who they are: the `query` message and the checks on its answers.

Used when a run starts and, during a run, for nodes that connect later: a site back
after a restart or an outage (its node id may be new), or a site that joins late.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from consortia.common.config.settings import RunSettings
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import RecordFieldError
from consortia.common.wire.run_identity import RunIdentity
from consortia.server.exchange.reply_verifier import signer_of
from consortia.server.exchange.sites import Site, site_from_reply
from consortia.server.run.privacy import SitePrivacy

__all__ = ["SiteAnswer", "query_messages", "read_answers"]

logger = logging.getLogger("consortia.server")


@dataclass(frozen=True)
class SiteAnswer:
    """One node's answer: the site and its privacy policy, or why it is left out."""

    node_id: int
    site: Site | None = None
    privacy: SitePrivacy | None = None
    refusal: str | None = None


def query_messages(
    settings: RunSettings, identity: RunIdentity, node_ids: Sequence[int], group: str
) -> list[Message]:
    """A `query` to each node: the task, data set and code hash of the run."""
    config = ConfigRecord(
        {
            rk.CFG_TASK: settings.task.value,
            rk.CFG_DATASET: settings.dataset,
            rk.CFG_APP_HASH: identity.app_hash,
        }
    )
    return [
        Message(
            RecordDict({rk.CONFIG_KEY: config}),
            dst_node_id=node_id,
            message_type=MessageType.QUERY,
            group_id=group,
        )
        for node_id in node_ids
    ]


def read_answers(
    replies: Mapping[int, Message], rejected: Mapping[int, str], *, signed: bool
) -> list[SiteAnswer]:
    """Each node's answer checked: an error reply, a malformed answer, or (with signed
    updates) a site name other than the one the reply is signed as, is a refusal."""
    answers = [SiteAnswer(node_id, refusal=reason) for node_id, reason in rejected.items()]
    for node_id, reply in sorted(replies.items()):
        if reply.has_error():
            answers.append(SiteAnswer(node_id, refusal=reply.error.reason))
            continue
        try:
            site, privacy = site_from_reply(node_id, reply)
        except (RecordFieldError, ValueError) as err:
            answers.append(SiteAnswer(node_id, refusal=f"malformed answer: {err}"))
            continue
        signer = signer_of(reply)
        if signed and signer != site.name:
            reason = f"answers as site {site.name!r} but signed as {signer!r}"
            answers.append(SiteAnswer(node_id, refusal=reason))
            continue
        answers.append(SiteAnswer(node_id, site, privacy))
    for answer in answers:
        if answer.refusal is not None:
            logger.warning("node %d left out: %s", answer.node_id, answer.refusal)
    return answers
