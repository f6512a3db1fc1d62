"""Waiting out objects still being uploaded, against Flower's own object pull and grid."""

from __future__ import annotations

import time

import pytest
from flwr.proto.message_pb2 import PullObjectRequest, PullObjectResponse
from flwr.proto.node_pb2 import Node
from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, pull_objects
from flwr.superlink.grid.http_grid import HttpGrid

from consortia.common.wire.object_pull import ObjectPull
from consortia.server.exchange.messaging import wait_for_uploads

CONTENT = b"object content"


class UploadingStore:
    """Stands in for a Runtime API servicer whose object arrives `ready_after_s` late."""

    def __init__(self, ready_after_s: float, *, known: bool = True) -> None:
        self.ready_at = time.monotonic() + ready_after_s
        self.known = known
        self.calls = 0

    def PullObject(self, request: PullObjectRequest) -> PullObjectResponse:  # noqa: N802
        self.calls += 1
        if not self.known:
            return PullObjectResponse(object_found=False, object_available=False)
        if time.monotonic() < self.ready_at:
            return PullObjectResponse(object_found=True, object_available=False)
        return PullObjectResponse(object_found=True, object_available=True, object_content=CONTENT)


def _flower_pull(pull: object) -> tuple[dict[str, bytes], float]:
    started = time.monotonic()
    pulled = pull_objects(
        ["obj"],
        make_pull_object_fn_protobuf(pull, Node(node_id=1), run_id=1),  # type: ignore[arg-type]
    )
    return pulled, time.monotonic() - started


def test_flower_backs_off_a_second_for_an_object_still_uploading() -> None:
    # The delay the wrapper removes: if Flower shortens its backoff, this test says so.
    store = UploadingStore(0.1)
    pulled, seconds = _flower_pull(store.PullObject)
    assert pulled == {"obj": CONTENT}
    assert seconds >= 0.75


def test_wrapped_pull_gets_the_object_as_soon_as_it_arrives() -> None:
    store = UploadingStore(0.1)
    wrapper = ObjectPull(store.PullObject, poll_s=0.01)
    pulled, seconds = _flower_pull(wrapper)
    assert pulled == {"obj": CONTENT}
    assert 0.09 <= seconds < 0.5
    assert wrapper.waits == 1
    assert 0.09 <= wrapper.waited_s < 0.5
    assert store.calls >= 3  # asked again, not once and then backed off


def test_available_and_unknown_objects_are_answered_at_once() -> None:
    ready = UploadingStore(0.0)
    wrapper = ObjectPull(ready.PullObject)
    assert wrapper(PullObjectRequest(object_id="a")).object_content == CONTENT
    unknown = UploadingStore(0.0, known=False)
    wrapper = ObjectPull(unknown.PullObject)
    assert not wrapper(PullObjectRequest(object_id="a")).object_found
    assert unknown.calls == 1
    assert wrapper.waits == 0
    with pytest.raises(ObjectPullError):
        _flower_pull(wrapper)


def test_wait_is_bounded_and_then_flowers_answer_stands() -> None:
    store = UploadingStore(60.0)
    wrapper = ObjectPull(store.PullObject, poll_s=0.01, wait_s=0.2)
    started = time.monotonic()
    response = wrapper(PullObjectRequest(object_id="a"))
    seconds = time.monotonic() - started
    assert response.object_found and not response.object_available
    assert 0.2 <= seconds < 0.6


def test_rejects_bad_settings() -> None:
    store = UploadingStore(0.0)
    with pytest.raises(ValueError, match="poll_s"):
        ObjectPull(store.PullObject, poll_s=0)
    with pytest.raises(ValueError, match="wait_s"):
        ObjectPull(store.PullObject, wait_s=-1)


def test_wrap_client_once_and_skip_clients_without_the_call() -> None:
    store = UploadingStore(0.05)
    first = ObjectPull.wrap_client(store)
    assert isinstance(first, ObjectPull)
    assert ObjectPull.wrap_client(store) is first
    assert store.PullObject is first
    assert store.PullObject(PullObjectRequest(object_id="a")).object_content == CONTENT
    assert ObjectPull.wrap_client(object()) is None


def test_wrap_class_covers_instances_built_elsewhere() -> None:
    class Client:
        def __init__(self, store: UploadingStore) -> None:
            self.store = store

        def PullObject(self, request: PullObjectRequest) -> PullObjectResponse:  # noqa: N802
            return self.store.PullObject(request)

    ObjectPull.wrap_class(Client, poll_s=0.01)
    wrapped = Client.PullObject
    ObjectPull.wrap_class(Client)
    assert Client.PullObject is wrapped  # wrapped once
    store = UploadingStore(0.1)
    pulled, seconds = _flower_pull(Client(store).PullObject)
    assert pulled == {"obj": CONTENT}
    assert seconds < 0.5


def test_exchange_wraps_the_grids_runtime_client_once() -> None:
    grid = HttpGrid("127.0.0.1:1", insecure=True, token="token")
    wrapper = wait_for_uploads(grid)
    assert isinstance(wrapper, ObjectPull)
    assert grid._runtime_client.PullObject is wrapper
    assert wait_for_uploads(grid) is wrapper
    grid.close()
