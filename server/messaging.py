"""One exchange over Flower's Grid: push messages, pull replies as they arrive."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["exchange"]

logger = logging.getLogger("consortia.server")


def exchange(
    grid: Grid,
    messages: Sequence[Message],
    timeout_s: float,
    *,
    poll_interval_s: float = 0.05,
    on_reply: Callable[[int, Message], None] | None = None,
) -> dict[int, Message]:
    """Push `messages` and pull replies until all came or `timeout_s` passed; returns
    the replies by destination node id (late nodes are missing and logged)."""
    message_ids = list(grid.push_messages(messages))
    node_of = {
        mid: msg.metadata.dst_node_id for mid, msg in zip(message_ids, messages, strict=True)
    }
    pending = set(message_ids)
    replies: dict[int, Message] = {}
    deadline = time.monotonic() + timeout_s
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
        if pending:
            time.sleep(poll_interval_s)
    for message_id in pending:
        logger.warning("no reply from node %d within %.0f s", node_of[message_id], timeout_s)
    return replies
