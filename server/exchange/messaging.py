"""One exchange over Flower's Grid: push messages, pull replies as they arrive."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["Quorum", "exchange"]

logger = logging.getLogger("consortia.server")


@dataclass(frozen=True)
class Quorum:
    """Once `needed` of the nodes in `counted` have answered without an error, the
    others get at most `grace_s` more seconds (a hung site cannot hold up the round)."""

    counted: Collection[int]
    needed: int
    grace_s: float

    def met(self, replies: dict[int, Message]) -> bool:
        answered = sum(
            1 for node, reply in replies.items() if node in self.counted and not reply.has_error()
        )
        return answered >= self.needed


def exchange(
    grid: Grid,
    messages: Sequence[Message],
    timeout_s: float,
    *,
    poll_interval_s: float = 0.05,
    on_reply: Callable[[int, Message], None] | None = None,
    quorum: Quorum | None = None,
) -> dict[int, Message]:
    """Push `messages` and pull replies until all came or `timeout_s` passed (or, with
    a `quorum`, its grace time after it was met); returns the replies by destination
    node id (late nodes are missing and logged)."""
    message_ids = list(grid.push_messages(messages))
    node_of = {
        mid: msg.metadata.dst_node_id for mid, msg in zip(message_ids, messages, strict=True)
    }
    pending = set(message_ids)
    replies: dict[int, Message] = {}
    deadline = time.monotonic() + timeout_s
    waited_for = f"{timeout_s:.0f} s"
    quorum_met = False
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            message_id = reply.metadata.reply_to_message_id
            if message_id not in pending:
                continue
            pending.discard(message_id)
            node_id = node_of[message_id]
            replies[node_id] = reply
            if on_reply is not None:
                on_reply(node_id, reply)
        if quorum is not None and not quorum_met and quorum.met(replies):
            quorum_met = True
            if time.monotonic() + quorum.grace_s < deadline:
                deadline = time.monotonic() + quorum.grace_s
                waited_for = f"{quorum.grace_s:.0f} s after the quorum answered"
        if pending:
            time.sleep(poll_interval_s)
    for message_id in pending:
        logger.warning("no reply from node %d within %s", node_of[message_id], waited_for)
    return replies
