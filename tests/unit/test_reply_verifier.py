"""Signed replies end to end in one process: the site's real signing mod signs what its
handler returns, the server's verifier checks it against the registered key; tampered,
replayed, unsigned, mis-attributed and unregistered replies are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from consortia.client.mods.signing import signing_mod
from consortia.common.crypto.signing import SignatureError
from consortia.common.crypto.site_keys import create_site_key
from consortia.common.wire import records as rk
from consortia.common.wire.record_digest import record_digest
from consortia.server.exchange.reply_verifier import ReplyVerifier
from consortia.server.registry.site_registry import SiteRegistry

RUN = 4242
NODE = 17


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    # What Flower's runtime sets in a ServerApp/ClientApp process before messages exist.
    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = RUN
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


def _site(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    keys = create_site_key(folder / "keys", name)
    (folder / "ca.pem").write_text("placeholder: only its existence is checked here\n")
    np.savez(folder / "data.npz", x=np.zeros(1))
    config = folder / "site.toml"
    config.write_text(
        f'[site]\nname = "{name}"\n[data]\npath = "data.npz"\nformat = "npz"\n'
        f'[node]\nstate_dir = "state"\nroot_certificates = "ca.pem"\n'
        f'key = "{keys.private_key}"\n',
        encoding="utf-8",
    )
    return config


# The fixture `world`: the server's verifier and registry, and the site configs of
# hospital-a (node NODE) and hospital-b (node NODE + 1).
World = tuple[ReplyVerifier, SiteRegistry, Path, Path]


@pytest.fixture()
def world(tmp_path: Path) -> World:
    registry = SiteRegistry(tmp_path / "registry")
    a = _site(tmp_path, "hospital-a")
    b = _site(tmp_path, "hospital-b")
    registry.register("hospital-a", a.parent / "keys" / "hospital-a.pub")
    registry.record_flower_node("hospital-a", NODE)
    registry.register("hospital-b", b.parent / "keys" / "hospital-b.pub")
    registry.record_flower_node("hospital-b", NODE + 1)
    return ReplyVerifier(registry, RUN), registry, a, b


def _request(round_number: int, node: int = NODE) -> Message:
    content = RecordDict({rk.CONFIG_KEY: ConfigRecord({rk.CFG_ROUND: round_number})})
    return Message(content, dst_node_id=node, message_type="train", group_id=str(round_number))


def _unsigned_reply(msg: Message) -> Message:
    content = RecordDict(
        {
            rk.ARRAYS_KEY: ArrayRecord({rk.WEIGHTS_ARRAY: Array(np.arange(6, dtype=np.float32))}),
            rk.TRAIN_METRICS_KEY: MetricRecord({rk.M_NUM_EXAMPLES: 12}),
        }
    )
    return Message(content, reply_to=msg)


def _handler(msg: Message, context: Context) -> Message:
    return _unsigned_reply(msg)


def _signed_reply(request: Message, config: Path, node: int = NODE) -> Message:
    context = Context(
        run_id=RUN,
        node_id=node,
        node_config={rk.NODE_CONFIG_SITE_CONFIG: str(config)},
        state=RecordDict(),
        run_config={},
    )
    return signing_mod(request, context, _handler)


def test_signed_reply_verifies_and_names_the_site(world: World) -> None:
    verifier, _, a, _ = world
    request = _request(1)
    verifier.stamp(request)
    verified = verifier.verify(request, _signed_reply(request, a))
    assert verified.site == "hospital-a"
    assert len(verified.digest) == 64


def test_tampered_update_is_refused(world: World) -> None:
    verifier, _, a, _ = world
    request = _request(1)
    verifier.stamp(request)
    reply = _signed_reply(request, a)
    reply.content[rk.ARRAYS_KEY] = ArrayRecord(
        {rk.WEIGHTS_ARRAY: Array(np.arange(6, dtype=np.float32) * 100)}
    )
    with pytest.raises(SignatureError, match="signature does not match"):
        verifier.verify(request, reply)


def test_tampered_signature_is_refused(world: World) -> None:
    verifier, _, a, _ = world
    request = _request(1)
    verifier.stamp(request)
    reply = _signed_reply(request, a)
    record = reply.content.config_records[rk.SIGNATURE_KEY]
    original = record[rk.SIG_SIGNATURE]
    assert isinstance(original, bytes)
    signature = bytearray(original)
    signature[-1] ^= 0x01
    record[rk.SIG_SIGNATURE] = bytes(signature)
    with pytest.raises(SignatureError):
        verifier.verify(request, reply)


def test_replayed_update_is_refused(world: World) -> None:
    verifier, _, a, _ = world
    first = _request(1)
    verifier.stamp(first)
    old_reply = _signed_reply(first, a)
    verifier.verify(first, old_reply)
    second = _request(2)
    verifier.stamp(second)
    with pytest.raises(SignatureError, match="replayed"):
        verifier.verify(second, old_reply)


def test_reply_with_another_nonce_is_refused(world: World) -> None:
    verifier, _, a, _ = world
    earlier = _request(1)
    verifier.stamp(earlier)
    reply = _signed_reply(earlier, a)  # signed for a nonce the server never accepted
    current = _request(1)
    verifier.stamp(current)  # a fresh nonce for the same round and node
    with pytest.raises(SignatureError, match="nonce does not match"):
        verifier.verify(current, reply)


def test_unsigned_reply_is_refused(world: World) -> None:
    verifier, _, _, _ = world
    request = _request(1)
    verifier.stamp(request)
    with pytest.raises(SignatureError, match="not signed"):
        verifier.verify(request, _unsigned_reply(request))


def test_site_signing_for_another_node_is_refused(world: World) -> None:
    verifier, _, _, b = world
    request = _request(1)  # sent to hospital-a's node
    verifier.stamp(request)
    with pytest.raises(SignatureError, match="registered as site 'hospital-a'"):
        verifier.verify(request, _signed_reply(request, b, node=NODE))


def test_unregistered_site_is_refused(world: World, tmp_path: Path) -> None:
    verifier, _, _, _ = world
    stranger = _site(tmp_path, "hospital-x")
    request = _request(1, node=99)
    verifier.stamp(request)
    with pytest.raises(SignatureError, match="not registered"):
        verifier.verify(request, _signed_reply(request, stranger, node=99))


def test_insecure_verifier_stamps_nothing() -> None:
    verifier = ReplyVerifier(None, RUN)
    request = _request(1)
    verifier.stamp(request)
    assert rk.CFG_NONCE not in request.content[rk.CONFIG_KEY]
    assert not verifier.enabled


def test_registered_site_signing_from_another_node_is_refused(world: World) -> None:
    verifier, _, a, _ = world
    request = _request(1, node=99)  # a node id the registry does not know
    verifier.stamp(request)
    with pytest.raises(SignatureError, match="registered as node 17"):
        verifier.verify(request, _signed_reply(request, a, node=99))


def test_unreadable_array_is_a_signature_error_not_a_crash() -> None:
    broken = Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=b"not numpy")
    content = RecordDict({rk.ARRAYS_KEY: ArrayRecord({rk.WEIGHTS_ARRAY: broken})})
    with pytest.raises(SignatureError, match="unreadable array"):
        record_digest(content)


def test_digest_tells_record_kinds_and_names_apart() -> None:
    as_metrics = RecordDict({"r": MetricRecord({"x": 1.0})})
    as_config = RecordDict({"r": ConfigRecord({"x": 1.0})})
    assert record_digest(as_metrics) != record_digest(as_config)
    arrays = Array(np.zeros(2, dtype=np.float32))
    nested = RecordDict({"a/b": ArrayRecord({"c": arrays})})
    flat = RecordDict({"a": ArrayRecord({"b/c": arrays})})
    assert record_digest(nested) != record_digest(flat)
