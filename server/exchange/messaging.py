"""One exchange over Flower's Grid: push messages, pull replies as they arrive.

Replies are polled every `poll_interval_s` (50 ms). The SuperLink shows a reply as soon as
its site announced it, before the reply's objects are uploaded; a pull in between would
make Flower's object pull back off for a second or more, so `exchange` first makes the
grid's object pulls wait out such uploads (`wait_for_uploads`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid

from consortia.common.wire.object_pull import ObjectPull

__all__ = ["Quorum", "exchange", "wait_for_uploads"]

logger = logging.getLogger("consortia.server")

# The Runtime API client of Flower 1.41's HttpGrid (the grid a deployed ServerApp gets);
# the in-memory grid of a simulation has none and needs no waiting.
RUNTIME_CLIENT = "_runtime_client"


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


def wait_for_uploads(grid: Grid) -> ObjectPull | None:
    """Make `grid`'s reply pulls ask again every 20 ms while a reply's objects are still
    uploading, instead of Flower's backoff from 1 s (done once per grid); returns the
    wrapper, or None for a grid without a Runtime API client."""
    return ObjectPull.wrap_client(getattr(grid, RUNTIME_CLIENT, None))


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
    wait_for_uploads(grid)
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
