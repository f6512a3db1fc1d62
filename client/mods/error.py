"""The outermost ClientApp mod: an exception no handler or mod caught leaves the site as a
generic reason, never as its text.

Flower's runtime turns an exception raised by a ClientApp into an error reply whose reason
is the exception's type and text (`run_clientapp`), and such a text can carry local file
paths, a data set's name or a value read from a file. This mod catches any `Exception` on
its way out, logs it with its traceback in the node's own log, and replies with Flower's
error code for a ClientApp exception (`ErrorCode.CLIENT_APP_RAISED_EXCEPTION`) and a
fixed reason that names only the exception's class and the message type. It must be the
first mod in `ClientApp(mods=[...])` so that it also covers the other mods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

__all__ = ["GENERIC_REASON", "error_mod"]

logger = logging.getLogger("consortia.client")

Handler = Callable[[Message, Context], Message]

GENERIC_REASON = "the site could not handle the {kind} message ({error}); details in the node log"


def error_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Run the rest of the app; an uncaught exception becomes a generic error reply."""
    try:
        return call_next(msg, context)
    except Exception as err:  # every exception stays at the site
        kind = msg.metadata.message_type
        # The details (text, traceback) go to the node's log, which stays at the site.
        logger.exception("the %s message raised an uncaught exception", kind)
        reason = GENERIC_REASON.format(kind=kind, error=type(err).__name__)
        return Message(
            Error(code=int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION), reason=reason), reply_to=msg
        )
