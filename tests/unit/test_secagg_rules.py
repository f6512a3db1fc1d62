"""Secure aggregation's safety rules: what sites and server refuse, and why."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from consortia.client.secure_aggregation.session import SecAggClient
from consortia.common.secure_aggregation.bundle import ShareBundle, open_bundle, seal_bundle
from consortia.common.secure_aggregation.config import SecAggError
from consortia.server.secure_aggregation.session import SecAggServer
from tests.unit.test_secagg import (
    Federation,
    assert_close,
    clipped_sum,
    random_vectors,
    session_config,
    through_flower,
)


def _until_unmask(
    fed: Federation, round_number: int = 1, silent: tuple[int, ...] = ()
) -> dict[int, tuple[np.ndarray, dict[int, bytes]]]:
    """Run a round up to (not including) unmasking; returns the `train` replies."""
    cfg = fed.cfg
    present = list(fed.server.members)
    vectors = random_vectors(present, cfg.vector_size, seed=round_number)
    fed.server.begin_round(round_number, present)
    replies = {}
    for node in present:
        masked, cts, _ = fed.clients[node].mask(round_number, present, vectors[node])
        if node not in silent:
            replies[node] = (masked, cts)
    fed.server.receive_masked(replies)
    return replies


# --- the site -----------------------------------------------------------------------------


def test_site_reveals_seed_shares_only_for_active_nodes_and_pair_keys_only_toward_dropped() -> None:
    fed = Federation(session_config(n=5, t=3))
    gone = 103
    _until_unmask(fed, silent=(gone,))
    me = 100
    active, dropped, cts = fed.server.unmask_request(me)
    assert dropped == [gone] and gone not in cts
    answer = fed.clients[me].unmask(1, active, dropped, cts)
    assert set(answer["b"]) == set(active)  # never a seed share of the dropped node
    assert set(answer["pair"]) == set(active)  # each active node's key with the dropped one
    assert {len(share) for share in answer["pair"].values()} == {36}  # one 32-byte key each


def test_site_refuses_inconsistent_unmask_lists() -> None:
    fed = Federation(session_config(n=5, t=3))
    gone = 103
    _until_unmask(fed, silent=(gone,))
    me, client = 100, fed.clients[100]
    active, dropped, cts = fed.server.unmask_request(me)
    with pytest.raises(SecAggError, match=f"lists node {gone} as active and dropped"):
        client.unmask(1, [*active, gone], dropped, cts)
    with pytest.raises(SecAggError, match="do not match the round's participants"):
        client.unmask(1, active, [], cts)  # 103 left out of both lists
    with pytest.raises(SecAggError, match="does not list this node as active"):
        client.unmask(1, [n for n in active if n != me], [*dropped, me], cts)
    with pytest.raises(SecAggError, match=f"got shares from node {gone}, not an active"):
        client.unmask(1, active, dropped, {**cts, gone: cts[106]})
    with pytest.raises(SecAggError, match="no shares from active neighbour 106"):
        client.unmask(1, active, dropped, {k: v for k, v in cts.items() if k != 106})
    assert client.stage == "masked"  # nothing was revealed; the honest request still works
    client.unmask(1, active, dropped, cts)


def test_site_refuses_to_unmask_with_too_few_active() -> None:
    fed = Federation(session_config(n=5, t=3))
    _until_unmask(fed)
    with pytest.raises(SecAggError, match="2 of its group active, 3 needed; refused"):
        fed.clients[100].unmask(1, [100, 103], [106, 109, 112], {})


def test_site_refuses_to_mask_with_too_few_of_its_group() -> None:
    fed = Federation(session_config(n=5, t=3))
    vector = np.zeros(fed.cfg.vector_size, np.float32)
    with pytest.raises(SecAggError, match="round 1: mask: 2 of its group take part, 3 needed"):
        fed.clients[100].mask(1, [100, 103], vector)


def test_each_stage_once_per_round_and_in_order() -> None:
    fed = Federation(session_config(n=3, t=2))
    client = fed.clients[100]
    vector = np.zeros(fed.cfg.vector_size, np.float32)
    with pytest.raises(SecAggError, match="cannot unmask"):
        client.unmask(1, [100, 103, 106], [], {})  # nothing masked yet
    _until_unmask(fed, round_number=4)
    with pytest.raises(SecAggError, match="rounds must increase"):
        client.mask(4, [100, 103, 106], vector)  # a second masking of round 4
    with pytest.raises(SecAggError, match="rounds must increase"):
        client.mask(3, [100, 103, 106], vector)
    with pytest.raises(SecAggError, match="cannot unmask"):
        client.unmask(3, *fed.server.unmask_request(100))  # not the round it masked
    request = fed.server.unmask_request(100)
    client.unmask(4, *request)
    with pytest.raises(SecAggError, match="cannot unmask"):
        client.unmask(4, *request)  # no second set of shares in a round
    assert client.to_state()["own_bundle"] == b""  # the round's shares are forgotten
    fresh, _ = SecAggClient.start(fed.cfg, 100)
    with pytest.raises(SecAggError, match="cannot mask before receiving the neighbours' keys"):
        fresh.mask(5, [100, 103, 106], vector)


def test_stale_round_ciphertext_is_refused() -> None:
    fed = Federation(session_config(n=4, t=3))
    replies_1 = _until_unmask(fed, round_number=1)
    answers = {n: fed.clients[n].unmask(1, *fed.server.unmask_request(n)) for n in replies_1}
    fed.server.unmask(answers)
    _until_unmask(fed, round_number=2)
    active, dropped, cts = fed.server.unmask_request(100)
    stale = {**cts, 103: replies_1[103][1][100]}  # 103's round-1 shares for 100, replayed
    with pytest.raises(SecAggError, match=r"made for session 11, round 1.*expected session 11, "):
        fed.clients[100].unmask(2, active, dropped, stale)
    fed.clients[100].unmask(2, active, dropped, cts)


def test_tampered_or_misrouted_shares_are_refused() -> None:
    fed = Federation(session_config(n=4, t=3))
    replies = _until_unmask(fed)
    active, dropped, cts = fed.server.unmask_request(100)
    token = bytearray(cts[103])
    token[40] ^= 1
    with pytest.raises(SecAggError, match="shares from node 103 do not decrypt"):
        fed.clients[100].unmask(1, active, dropped, {**cts, 103: bytes(token)})
    misrouted = {**cts, 103: replies[103][1][106]}  # 103's shares for 106, handed to 100
    with pytest.raises(SecAggError, match="shares from node 103 do not decrypt"):
        fed.clients[100].unmask(1, active, dropped, misrouted)


def test_bundle_header_binds_session_round_sender_and_receiver() -> None:
    key = base64.urlsafe_b64encode(bytes(range(32)))  # a Fernet key
    bundle = ShareBundle(7, 3, 100, 103, b"b" * 36, {106: b"p" * 36})
    sealed = seal_bundle(key, bundle)
    assert open_bundle(key, sealed, session=7, round_number=3, sender=100, receiver=103) == bundle
    for field, value in (
        ("session", 8),
        ("round_number", 4),
        ("sender", 106),
        ("receiver", 106),
    ):
        expected = {"session": 7, "round_number": 3, "sender": 100, "receiver": 103}
        expected[field] = value
        with pytest.raises(SecAggError, match="were made for session 7, round 3, from node 100"):
            open_bundle(key, sealed, **expected)


def test_site_refuses_changed_or_foreign_public_keys() -> None:
    cfg = session_config(n=5, t=3, k=2)
    fed = Federation(cfg)
    me = 100
    client = fed.clients[me]
    theirs = fed.forwarded[me]
    client.receive_keys(theirs)  # the same keys again: fine
    neighbour = next(n for n in theirs if n != me)
    stranger = next(n for n in cfg.participants if n not in cfg.group_of(me))
    _, other_keys = SecAggClient.start(cfg, neighbour)
    with pytest.raises(SecAggError, match=f"keys of node {neighbour} changed within session"):
        client.receive_keys({**theirs, neighbour: other_keys})
    with pytest.raises(SecAggError, match=f"keys of node {stranger}, not a neighbour"):
        client.receive_keys({**theirs, stranger: other_keys})
    with pytest.raises(SecAggError, match="did not echo this node's own public keys"):
        client.receive_keys({n: k for n, k in theirs.items() if n != me})
    again, keys = SecAggClient.start(cfg, me)
    with pytest.raises(SecAggError, match="identical"):
        again.receive_keys({me: keys, neighbour: keys})  # a neighbour claiming my keys


def test_client_state_is_validated() -> None:
    fed = Federation(session_config(n=3, t=2))
    state = through_flower(fed.clients[100].to_state())
    with pytest.raises(SecAggError, match="missing field 'sk_s'"):
        SecAggClient.from_state({k: v for k, v in state.items() if k != "sk_s"})
    with pytest.raises(SecAggError, match="unknown stage"):
        SecAggClient.from_state({**state, "stage": "unmasked"})
    with pytest.raises(SecAggError, match="own shares do not fit its stage"):
        SecAggClient.from_state({**state, "stage": "masked"})
    with pytest.raises(SecAggError, match="peer lists of different lengths"):
        SecAggClient.from_state({**state, "peer_pair": state["peer_pair"][:1]})


# --- the server ---------------------------------------------------------------------------


def test_server_refuses_nodes_outside_the_session_until_a_rekey() -> None:
    cfg = session_config(n=5, t=3)
    fed = Federation(cfg, silent=[112])  # 112 missed the key advertisement
    assert fed.server.members == (100, 103, 106, 109)
    assert fed.server.needs_rekey(cfg.participants)
    assert not fed.server.needs_rekey([100, 103, 106])
    assert fed.server.usable(cfg.participants) == [100, 103, 106, 109]
    with pytest.raises(SecAggError, match="node 112 did not complete the setup of session 11"):
        fed.server.begin_round(1, cfg.participants)
    with pytest.raises(SecAggError, match="node 99 is not a participant of session 11"):
        fed.server.begin_round(1, [99, 100, 103, 106])
    fed.server.begin_round(2, [100, 103, 106, 109])
    with pytest.raises(SecAggError, match="rounds must increase"):
        fed.server.begin_round(2, [100, 103, 106, 109])


def test_usable_drops_sites_whose_group_is_too_thin() -> None:
    cfg = session_config(n=8, t=2, k=2)  # groups of 3
    fed = Federation(cfg)
    node = cfg.participants[0]
    alone = [n for n in cfg.participants if n not in cfg.neighbours_of(node)]
    assert node in alone
    usable = fed.server.usable(alone)
    assert node not in usable and fed.server.needs_rekey(alone)
    vectors = random_vectors(cfg.participants, cfg.vector_size)
    result, _ = fed.round(1, vectors, participants=usable)
    assert_close(result, clipped_sum(vectors, usable), len(usable), len(usable))


def test_server_refuses_unexpected_or_malformed_answers() -> None:
    cfg = session_config(n=4, t=3, size=16)
    fed = Federation(cfg)
    present = list(cfg.participants)
    vectors = {n: np.zeros(16, np.float32) for n in present}
    fed.server.begin_round(1, present)
    replies = {n: fed.clients[n].mask(1, present, vectors[n])[:2] for n in present}
    bad_cases: list[tuple[Any, str]] = [
        ({**replies, 99: replies[100]}, "answer from node 99, which is not expected"),
        ({**replies, 100: (replies[100][0][:15], replies[100][1])}, "not a uint32 vector of 16"),
        ({**replies, 100: (np.zeros(16, np.int64), replies[100][1])}, "not a uint32 vector"),
        ({**replies, 100: ({}, replies[100][1])}, "not a uint32 vector"),
        ({**replies, 100: (replies[100][0], {})}, "node 100 sent shares for nodes"),
        ({**replies, 100: replies[100][0]}, "is not \\(vector, shares\\)"),
    ]
    for round_number, (answer, message) in enumerate(bad_cases, start=2):
        with pytest.raises(SecAggError, match=message):
            fed.server.receive_masked(answer)
        with pytest.raises(SecAggError, match="already failed"):
            fed.server.receive_masked(replies)
        fed.server.begin_round(round_number, present)  # the next round starts afresh


def test_server_refuses_shares_it_must_not_get() -> None:
    fed = Federation(session_config(n=5, t=3))
    gone = 103
    _until_unmask(fed, silent=(gone,))
    active = fed.server.active
    answers = {n: fed.clients[n].unmask(1, *fed.server.unmask_request(n)) for n in active}
    me = active[0]
    forged = {**answers, me: {**answers[me], "b": {**answers[me]["b"], gone: b"x" * 36}}}
    with pytest.raises(SecAggError, match=f"seed share for node {gone}, not an active member"):
        fed.server.unmask(forged)


def test_server_refuses_unmask_answers_from_dropped_nodes() -> None:
    fed = Federation(session_config(n=4, t=3))
    gone = 109
    _until_unmask(fed, silent=(gone,))
    with pytest.raises(SecAggError, match=f"no unmask request for node {gone}"):
        fed.server.unmask_request(gone)
    answers = {n: fed.clients[n].unmask(1, *fed.server.unmask_request(n)) for n in (100, 103)}
    answers[gone] = {"b": {}, "pair": {}}
    with pytest.raises(SecAggError, match=f"answer from node {gone}, which is not expected"):
        fed.server.unmask(answers)


def test_failed_setup_ends_the_session() -> None:
    cfg = session_config(n=5, t=3)
    server = SecAggServer(cfg)
    keys = {n: SecAggClient.start(cfg, n)[1] for n in cfg.participants[:2]}
    with pytest.raises(SecAggError, match="advertise keys': 2 of 5 sites answered, at least 3"):
        server.receive_public_keys(keys)
    assert server.needs_rekey(cfg.participants[:2])
    with pytest.raises(SecAggError, match="no round before the setup succeeded"):
        server.begin_round(1, cfg.participants)
    with pytest.raises(SecAggError, match="keys were already received"):
        server.receive_public_keys(keys)
    shared = SecAggClient.start(cfg, 100)[1]
    with pytest.raises(SecAggError, match="node 103 reuses a key of node 100"):
        SecAggServer(cfg).receive_public_keys({100: shared, 103: shared, 106: shared})
