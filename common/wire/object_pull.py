"""A Runtime API ``PullObject`` call that waits out an object still being uploaded.

Flower 1.41 makes a message visible before its objects are stored: the SuperLink shows a
reply as soon as the SuperNode announced it (its objects follow, one request each), and a
SuperNode makes a task acquirable before it has pulled the task's message objects from the
SuperLink. A pull that comes in between gets "found, not yet available", and Flower's
``pull_objects`` then sleeps an exponential backoff that starts at 1 s
(``PULL_INITIAL_BACKOFF``). Uploads on one machine or a hospital link take tens to
hundreds of milliseconds, so most of that second is idle.

`ObjectPull` wraps the ``PullObject`` call that Flower's pull goes through: while the
answer is "found, not yet available" it asks again every `poll_s`, up to `wait_s`, and
only then hands the answer to Flower (whose backoff and time limits apply as before). The
objects, their hashes and every check on them are Flower's, unchanged; only the wait
between two identical requests is shorter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from flwr.proto.message_pb2 import PullObjectRequest, PullObjectResponse

__all__ = ["DEFAULT_POLL_S", "DEFAULT_WAIT_S", "ObjectPull", "PullObjectCall"]

logger = logging.getLogger("consortia.wire")

DEFAULT_POLL_S = 0.02
DEFAULT_WAIT_S = 5.0
PULL_OBJECT = "PullObject"


class PullObjectCall(Protocol):
    """The shape of a Runtime API ``PullObject`` call."""

    def __call__(self, request: PullObjectRequest) -> PullObjectResponse: ...


class ObjectPull:
    """Ask for an object again, every `poll_s` for up to `wait_s`, while it is found but
    still uploading; the last answer is returned as it came."""

    def __init__(
        self,
        pull: PullObjectCall,
        *,
        poll_s: float = DEFAULT_POLL_S,
        wait_s: float = DEFAULT_WAIT_S,
    ) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be positive")
        if wait_s < 0:
            raise ValueError("wait_s must not be negative")
        self.pull = pull
        self.poll_s = poll_s
        self.wait_s = wait_s
        self._lock = threading.Lock()  # Flower pulls the objects of a message in threads
        self.waits = 0  # pulls that found an object still uploading
        self.waited_s = 0.0

    def __call__(self, request: PullObjectRequest) -> PullObjectResponse:
        started = time.monotonic()
        response = self.pull(request)
        if not _uploading(response):
            return response
        deadline = started + self.wait_s
        while _uploading(response) and time.monotonic() < deadline:
            time.sleep(self.poll_s)
            response = self.pull(request)
        waited = time.monotonic() - started
        with self._lock:
            self.waits += 1
            self.waited_s += waited
        logger.debug("object %s was still uploading; waited %.3f s", request.object_id, waited)
        return response

    @classmethod
    def wrap_client(
        cls, client: object, *, poll_s: float = DEFAULT_POLL_S, wait_s: float = DEFAULT_WAIT_S
    ) -> ObjectPull | None:
        """Wrap `client`'s ``PullObject`` (once); returns the wrapper, or None when
        `client` has no such call."""
        current = getattr(client, PULL_OBJECT, None)
        if current is None:
            return None
        if isinstance(current, cls):
            return current
        wrapper = cls(current, poll_s=poll_s, wait_s=wait_s)
        setattr(client, PULL_OBJECT, wrapper)
        return wrapper

    @classmethod
    def wrap_class(
        cls, client_class: type, *, poll_s: float = DEFAULT_POLL_S, wait_s: float = DEFAULT_WAIT_S
    ) -> None:
        """Wrap ``PullObject`` of every instance of `client_class`, for clients that Flower
        builds inside its own functions (call it only in a process that runs one task)."""
        method: Callable[[Any, PullObjectRequest], PullObjectResponse] = getattr(
            client_class, PULL_OBJECT
        )
        if getattr(method, "__wrapped_by__", None) is cls:
            return

        def pull_object(self: Any, request: PullObjectRequest) -> PullObjectResponse:
            def once(request: PullObjectRequest) -> PullObjectResponse:
                return method(self, request)

            return cls(once, poll_s=poll_s, wait_s=wait_s)(request)

        pull_object.__wrapped_by__ = cls  # type: ignore[attr-defined]
        pull_object.__doc__ = method.__doc__
        setattr(client_class, PULL_OBJECT, pull_object)


def _uploading(response: PullObjectResponse) -> bool:
    """Registered (found) but its content not stored yet."""
    return response.object_found and not response.object_available
