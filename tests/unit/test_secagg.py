"""Secure aggregation (SecAgg+) sessions end to end: sites and server as state machines."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.common import serde
from flwr.proto.recorddict_pb2 import ConfigRecord as ProtoConfigRecord

from consortia.client.secure_aggregation.session import SecAggClient
from consortia.common.errors import ConsortiaError
from consortia.common.secure_aggregation.arithmetic import (
    dequantise_sum,
    mask_stream,
    pair_mask_key,
    quantise,
    self_mask_key,
    sum_error_bound,
)
from consortia.common.secure_aggregation.config import SecAggConfig, SecAggError
from consortia.common.secure_aggregation.crypto import combine_secret
from consortia.common.secure_aggregation.wire import (
    decode_ciphertexts,
    decode_public_keys,
    decode_round,
    decode_unmask_request,
    decode_unmask_shares,
    encode_ciphertexts,
    encode_public_keys,
    encode_round,
    encode_unmask_request,
    encode_unmask_shares,
)
from consortia.server.secure_aggregation.session import SecAggServer

CLIP = 1.0
Answers = dict[int, dict[str, dict[int, bytes]]]


def session_config(
    n: int = 5, t: int = 3, k: int | None = None, size: int = 64, session: int = 11
) -> SecAggConfig:
    """A session of `n` sites with ids 100, 103, 106, ..."""
    return SecAggConfig(
        session=session,
        participants=tuple(100 + 3 * i for i in range(n)),
        threshold=t,
        neighbours=n - 1 if k is None else k,
        clip_range=CLIP,
        vector_size=size,
    )


def random_vectors(
    nodes: Iterable[int], size: int, scale: float = 0.6, seed: int = 0
) -> dict[int, np.ndarray]:
    """Test updates (NumPy's generator is fine for test data, never for masks)."""
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0.0, scale, size).astype(np.float32) for i in nodes}


def through_flower(values: Mapping[str, Any]) -> dict[str, Any]:
    """What another process gets back: a ConfigRecord, serialised to protobuf and back."""
    return _from_proto(_to_proto(values))


def _to_proto(values: Mapping[str, Any]) -> bytes:
    return bytes(serde.config_record_to_proto(ConfigRecord(dict(values))).SerializeToString())


def _from_proto(data: bytes) -> dict[str, Any]:
    return dict(serde.config_record_from_proto(ProtoConfigRecord.FromString(data)))


def clipped_sum(vectors: Mapping[int, np.ndarray], nodes: Iterable[int]) -> np.ndarray:
    """The float64 sum of the nodes' vectors clipped to the protocol's range."""
    size = len(next(iter(vectors.values())))
    return sum((np.clip(vectors[i].astype(np.float64), -CLIP, CLIP) for i in nodes), np.zeros(size))


def assert_close(result: np.ndarray, expected: np.ndarray, n: int, m: int) -> None:
    """`result` is `expected` to within the quantisation bound of `m` of `n` sites."""
    assert result.dtype == np.float64
    bound = sum_error_bound(CLIP, n, m) * (1 + 1e-6) + 1e-12
    assert np.max(np.abs(result - expected)) <= bound


class Federation:
    """A session's server and sites, driven the way the round loop drives them.

    With `via_state`, every site is rebuilt from its stored state (serialised as
    protobuf) before each step; with `wire`, every message goes through its ConfigRecord
    encoding.
    """

    def __init__(
        self,
        cfg: SecAggConfig,
        *,
        silent: Iterable[int] = (),
        via_state: bool = False,
        wire: bool = False,
    ) -> None:
        self.cfg, self.via_state, self.wire = cfg, via_state, wire
        self.server = SecAggServer(cfg)
        self.clients: dict[int, SecAggClient] = {}
        keys: dict[int, dict[str, bytes]] = {}
        for node in cfg.participants:
            if node not in set(silent):
                self.clients[node], keys[node] = SecAggClient.start(cfg, node)
        if wire:
            keys = {node: through_flower(theirs) for node, theirs in keys.items()}
        self.forwarded = self.server.receive_public_keys(keys)
        for node, theirs in self.forwarded.items():
            if wire:
                theirs = decode_public_keys(through_flower(encode_public_keys(theirs)), "server")
            self.client(node).receive_keys(theirs)
        self.masked: dict[int, dict[int, np.ndarray]] = {}  # round -> node -> masked vector
        self.answers: dict[int, Answers] = {}  # round -> unmask answers

    def client(self, node: int) -> SecAggClient:
        """The node's client; with `via_state`, rebuilt from its stored state."""
        if self.via_state:
            self.clients[node] = SecAggClient.from_state(
                through_flower(self.clients[node].to_state())
            )
        return self.clients[node]

    def round(
        self,
        round_number: int,
        vectors: Mapping[int, np.ndarray],
        *,
        participants: Sequence[int] | None = None,
        silent: Iterable[int] = (),
        after_mask: Iterable[int] = (),
    ) -> tuple[np.ndarray, dict[int, int]]:
        """One round; `silent` sites send no `train` reply, `after_mask` ones do but then
        do not answer the unmask request. Returns the sum and the clipped counts."""
        present = list(self.server.members if participants is None else participants)
        silent, after_mask = set(silent), set(after_mask)
        self.server.begin_round(round_number, present)
        replies: dict[int, tuple[np.ndarray, dict[int, bytes]]] = {}
        clipped: dict[int, int] = {}
        for node in present:
            if node in silent:
                continue
            r, who = round_number, present
            if self.wire:
                r, who = decode_round(through_flower(encode_round(r, who)), "server")
            masked, cts, clipped[node] = self.client(node).mask(r, who, vectors[node])
            if self.wire:
                cts = decode_ciphertexts(through_flower(encode_ciphertexts(cts)), f"node {node}")
            replies[node] = (masked, cts)
        self.masked[round_number] = {node: reply[0].copy() for node, reply in replies.items()}
        active, _ = self.server.receive_masked(replies)
        answers: Answers = {}
        for node in active:
            if node in after_mask:
                continue
            request = (round_number, *self.server.unmask_request(node))
            if self.wire:
                request = decode_unmask_request(
                    through_flower(encode_unmask_request(*request)), "server"
                )
            answer = self.client(node).unmask(*request)
            if self.wire:
                answer = decode_unmask_shares(through_flower(encode_unmask_shares(answer)), "n")
            answers[node] = answer
        self.answers[round_number] = answers
        return self.server.unmask(answers), clipped


def test_secure_sum_equals_the_sum_of_clipped_vectors() -> None:
    cfg = session_config(n=5, t=3)
    vectors = random_vectors(cfg.participants, cfg.vector_size, scale=0.8)
    fed = Federation(cfg)
    result, clipped = fed.round(1, vectors)
    assert_close(result, clipped_sum(vectors, cfg.participants), 5, 5)
    assert fed.server.active == cfg.participants and fed.server.dropped == ()
    assert clipped == {i: int(np.count_nonzero(np.abs(v) > CLIP)) for i, v in vectors.items()}
    assert sum(clipped.values()) > 0
    # the clipping matters: the unclipped sum is off by far more than the bound
    plain = sum(v.astype(np.float64) for v in vectors.values())
    assert np.max(np.abs(result - plain)) > 0.1


def test_several_rounds_in_one_session_with_fresh_masks() -> None:
    cfg = session_config(n=4, t=3, size=5000)
    same = random_vectors(cfg.participants, cfg.vector_size, seed=3)
    fed = Federation(cfg)
    for round_number in (1, 2, 5):
        result, _ = fed.round(round_number, same)
        assert_close(result, clipped_sum(same, cfg.participants), 4, 4)
    for node in cfg.participants:
        first, second, third = (fed.masked[r][node] for r in (1, 2, 5))
        # the same input is masked differently every round (fresh seed, per-round pair keys)
        assert np.mean(first == second) < 0.01 and np.mean(second == third) < 0.01
        # and not by a constant offset either: the difference looks uniform
        difference = (first - second).astype(np.float64)
        assert abs(difference.mean() / 2**32 - 0.5) < 0.05
    assert all(client.last_round == 5 for client in fed.clients.values())


def test_masked_vectors_look_nothing_like_the_input() -> None:
    cfg = session_config(n=3, t=2, size=20_000)
    ramp = np.linspace(-0.9, 0.9, cfg.vector_size, dtype=np.float32)
    fed = Federation(cfg)
    fed.round(1, {i: ramp.copy() for i in cfg.participants})
    quantised, _ = quantise(ramp, CLIP, cfg.n)
    # sanity: the unmasked quantised vector is perfectly correlated with the input
    assert np.corrcoef(quantised.astype(np.float64), ramp)[0, 1] > 0.999
    masked = fed.masked[1]
    for vector in masked.values():
        assert vector.dtype == np.uint32
        assert vector.nbytes == ramp.nbytes  # as many bytes as the float32 update
        assert abs(np.corrcoef(vector.astype(np.float64), ramp)[0, 1]) < 0.05
        assert np.mean(np.abs(dequantise_sum(vector, CLIP, cfg.n, 1) - ramp)) > 0.5
    # two sites' vectors do not cancel either (the self masks stay)
    pair = masked[100] + masked[103]
    assert abs(np.corrcoef(pair.astype(np.float64), ramp)[0, 1]) < 0.05


def test_site_not_selected_for_a_round() -> None:
    cfg = session_config(n=5, t=3)
    vectors = random_vectors(cfg.participants, cfg.vector_size)
    fed = Federation(cfg)
    chosen = [100, 106, 109, 112]  # 103 is not selected for round 1
    result, _ = fed.round(1, vectors, participants=chosen)
    assert fed.server.participants == tuple(chosen) and fed.server.dropped == ()
    assert_close(result, clipped_sum(vectors, chosen), 4, 4)
    assert fed.clients[103].last_round == -1
    result, _ = fed.round(2, vectors, participants=[103, 106, 112])
    assert_close(result, clipped_sum(vectors, [103, 106, 112]), 3, 3)


@pytest.mark.parametrize("dropped", [1, 2])
def test_sites_dropping_during_training(dropped: int) -> None:
    cfg = session_config(n=5, t=3)
    vectors = random_vectors(cfg.participants, cfg.vector_size)
    gone = cfg.participants[1 : 1 + dropped]
    fed = Federation(cfg)
    result, _ = fed.round(1, vectors, silent=gone)
    survivors = [i for i in cfg.participants if i not in gone]
    assert fed.server.active == tuple(survivors) and fed.server.dropped == gone
    assert_close(result, clipped_sum(vectors, survivors), 5, len(survivors))


def test_sites_dropping_at_setup_and_unmasking() -> None:
    cfg = session_config(n=7, t=4)
    vectors = random_vectors(cfg.participants, cfg.vector_size)
    p = cfg.participants
    fed = Federation(cfg, silent=[p[0]])  # p[0] never sends keys: not in the session
    assert fed.server.members == p[1:]
    # p[3] drops while training, p[6] after its masked vector arrived; p[6] is in the sum,
    # and its pairwise mask with p[3] is rebuilt from the shares it gave its group
    result, _ = fed.round(1, vectors, silent=[p[3]], after_mask=[p[6]])
    survivors = [i for i in p[1:] if i != p[3]]
    assert fed.server.dropped == (p[3],)
    assert_close(result, clipped_sum(vectors, survivors), 6, len(survivors))


def test_dropped_site_continues_in_the_next_round_and_earlier_rounds_stay_hidden() -> None:
    cfg = session_config(n=4, t=3, size=4000)
    p = cfg.participants
    j = p[2]
    rounds = {r: random_vectors(p, cfg.vector_size, seed=r) for r in (1, 2, 3)}
    fed = Federation(cfg)
    result, _ = fed.round(1, rounds[1])
    assert_close(result, clipped_sum(rounds[1], p), 4, 4)
    result, _ = fed.round(2, rounds[2], silent=[j])
    others = [i for i in p if i != j]
    assert_close(result, clipped_sum(rounds[2], others), 4, 3)
    # no long-term secret was revealed: no re-key, and j takes part in round 3
    assert not fed.server.needs_rekey(p)
    result, _ = fed.round(3, rounds[3])
    assert_close(result, clipped_sum(rounds[3], p), 4, 4)

    # What the server holds about j's round-1 update: its masked vector and its self-mask
    # seed (j was active in round 1), and, from round 2, the pairwise keys of j with each
    # other site (j had dropped). Those keys are bound to round 2: they do not unmask
    # round 1. (Had the sites revealed j's session key instead, they would.)
    t = cfg.threshold
    seed = combine_secret([a["b"][j] for a in fed.answers[1].values()], t, "seed")
    revealed = {}
    for k in others:
        shares = [a["pair"][k] for a in fed.answers[2].values() if k in a["pair"]]
        revealed[k] = combine_secret(shares, t, "pair key")
    target, _ = quantise(rounds[1][j], CLIP, 4)
    attempt = fed.masked[1][j] - mask_stream(self_mask_key(seed, cfg.session, 1, j), 4000)
    for k, key in revealed.items():
        attempt = attempt - mask_stream(key, 4000) if j < k else attempt + mask_stream(key, 4000)
    assert np.mean(attempt == target) < 0.01
    # ... whereas the round-1 keys (what j's session key would give) do
    recovered = fed.masked[1][j] - mask_stream(self_mask_key(seed, cfg.session, 1, j), 4000)
    for k in others:
        state: dict[str, Any] = dict(fed.clients[k].to_state())
        secret = dict(zip(state["peer_ids"], state["peer_pair"], strict=True))[j]
        key = pair_mask_key(secret, cfg.session, 1, j, k)
        assert key not in revealed.values()
        stream = mask_stream(key, 4000)
        recovered = recovered - stream if j < k else recovered + stream
    np.testing.assert_array_equal(recovered, target)


@pytest.mark.parametrize(
    ("where", "answered"),
    [
        ("advertise keys", "2 of 5"),
        ("collect masked vectors", "2 of 5"),
        ("unmask", "2 of 5"),
    ],
)
def test_too_many_dropouts_fail_clearly(where: str, answered: str) -> None:
    cfg = session_config(n=5, t=3)
    vectors = random_vectors(cfg.participants, cfg.vector_size)
    gone = cfg.participants[:3]
    with pytest.raises(SecAggError) as caught:
        fed = Federation(cfg, silent=gone if where == "advertise keys" else ())
        if where == "collect masked vectors":
            fed.round(1, vectors, silent=gone)
        else:
            fed.round(1, vectors, after_mask=gone)
    message = str(caught.value)
    assert where in message and answered in message and "3 needed" in message
    assert isinstance(caught.value, ConsortiaError)
    if where != "advertise keys":  # a lost round does not end the session
        result, _ = fed.round(2, vectors)
        assert_close(result, clipped_sum(vectors, cfg.participants), 5, 5)


def test_round_with_too_few_participants_is_refused_before_it_starts() -> None:
    cfg = session_config(n=5, t=3)
    fed = Federation(cfg)
    with pytest.raises(SecAggError, match=r"begin round.*only 2 of node 100's group take part"):
        fed.server.begin_round(1, [100, 103])
    assert fed.server.usable([100, 103]) == []
    assert fed.server.needs_rekey([100, 103])
    vectors = random_vectors(cfg.participants, cfg.vector_size)
    result, _ = fed.round(1, vectors, participants=[100, 103, 106])
    assert_close(result, clipped_sum(vectors, [100, 103, 106]), 3, 3)


def test_neighbour_graph_is_symmetric_sparse_and_shared() -> None:
    cfg = session_config(n=8, t=3, k=4)
    for node in cfg.participants:
        near = cfg.neighbours_of(node)
        assert len(near) == 4 and node not in near
        assert all(node in cfg.neighbours_of(j) for j in near)
    # another party builds the same graph from the wire form; another session a new one
    again = SecAggConfig.from_config(through_flower(cfg.to_config()))
    assert all(again.neighbours_of(i) == cfg.neighbours_of(i) for i in cfg.participants)
    graphs = {
        tuple(
            SecAggConfig(s, cfg.participants, 3, 4, CLIP, 8).neighbours_of(i)
            for i in cfg.participants
        )
        for s in range(5)
    }
    assert len(graphs) > 1
    complete = session_config(n=8, t=5, k=7)
    assert complete.neighbours_of(100) == tuple(100 + 3 * i for i in range(1, 8))


def test_secagg_plus_sparse_graph_with_dropouts_over_three_rounds() -> None:
    cfg = session_config(n=8, t=3, k=4)
    p = cfg.participants
    fed = Federation(cfg)
    # round 1: one site drops while training, another after sending its vector
    vectors = random_vectors(p, cfg.vector_size, seed=1)
    result, _ = fed.round(1, vectors, silent=[p[1]], after_mask=[p[5]])
    assert fed.server.dropped == (p[1],)
    survivors = [i for i in p if i != p[1]]
    assert_close(result, clipped_sum(vectors, survivors), 8, 7)
    # each active site was asked only about its own group
    for answer in fed.answers[1].values():
        assert len(answer["b"]) <= 5
    # round 2: two sites drop while training, in different places of the ring
    vectors = random_vectors(p, cfg.vector_size, seed=2)
    gone = [p[0], p[6]]
    result, _ = fed.round(2, vectors, silent=gone)
    survivors = [i for i in p if i not in gone]
    assert_close(result, clipped_sum(vectors, survivors), 8, 6)
    # round 3: a subset takes part (p[1] back in), one of them drops at unmasking
    chosen = fed.server.usable([i for i in p if i != p[4]])
    assert p[1] in chosen
    vectors = random_vectors(p, cfg.vector_size, seed=3)
    result, _ = fed.round(3, vectors, participants=chosen, after_mask=[chosen[2]])
    assert_close(result, clipped_sum(vectors, chosen), len(chosen), len(chosen))


def test_state_round_trips_between_every_step_across_rounds_over_the_wire() -> None:
    cfg = session_config(n=5, t=2, k=2)
    p = cfg.participants
    fed = Federation(cfg, via_state=True, wire=True)
    for round_number, gone in ((1, []), (2, [p[4]]), (3, [p[0]])):
        vectors = random_vectors(p, cfg.vector_size, seed=round_number)
        result, _ = fed.round(round_number, vectors, silent=gone)
        survivors = [i for i in p if i not in gone]
        assert_close(result, clipped_sum(vectors, survivors), 5, len(survivors))


def _step(state: bytes, action: str, args: tuple[Any, ...]) -> tuple[bytes, Any]:
    """One client step in its own process: state in, state and result out."""
    client = SecAggClient.from_state(_from_proto(state))
    result = getattr(client, action)(*args)
    return _to_proto(client.to_state()), result


def _start(config: dict[str, Any], node: int) -> tuple[bytes, dict[str, bytes]]:
    client, keys = SecAggClient.start(SecAggConfig.from_config(config), node)
    return _to_proto(client.to_state()), keys


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
def test_state_travels_between_separate_processes() -> None:
    cfg = session_config(n=4, t=3, size=256)
    p = cfg.participants
    server = SecAggServer(cfg)
    context = multiprocessing.get_context("fork")
    # a fresh process for every step of every site, as a SuperNode may run them
    with context.Pool(2, maxtasksperchild=1) as pool:
        started = {node: pool.apply(_start, (cfg.to_config(), node)) for node in p}
        states = {node: state for node, (state, _) in started.items()}
        forwarded = server.receive_public_keys({n: keys for n, (_, keys) in started.items()})
        for node in p:
            states[node], _ = pool.apply(_step, (states[node], "receive_keys", (forwarded[node],)))
        for round_number, gone in ((1, None), (2, p[1]), (3, None)):
            vectors = random_vectors(p, cfg.vector_size, seed=round_number)
            server.begin_round(round_number, p)
            replies = {}
            for node in p:
                if node == gone:
                    continue
                args = (round_number, list(p), vectors[node])
                states[node], (masked, cts, _) = pool.apply(_step, (states[node], "mask", args))
                replies[node] = (masked, cts)
            active, _ = server.receive_masked(replies)
            answers = {}
            for node in active:
                request = (round_number, *server.unmask_request(node))
                states[node], answers[node] = pool.apply(_step, (states[node], "unmask", request))
            result = server.unmask(answers)
            assert_close(result, clipped_sum(vectors, active), 4, len(active))


def test_protocol_uses_no_numpy_random_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = session_config(n=4, t=3)
    vectors = random_vectors(cfg.participants, cfg.vector_size)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("numpy random generator used")

    for name in ("RandomState", "default_rng", "randint", "rand", "seed", "Generator"):
        monkeypatch.setattr(np.random, name, forbidden)
    fed = Federation(cfg)
    for round_number in (1, 2):
        result, _ = fed.round(round_number, vectors, silent=[cfg.participants[0]])
        assert_close(result, clipped_sum(vectors, cfg.participants[1:]), 4, 3)


def test_large_vector_speed_sanity() -> None:
    cfg = session_config(n=3, t=2, size=1_000_000)
    rng = np.random.default_rng(1)
    vectors = {
        i: rng.uniform(-1.5, 1.5, cfg.vector_size).astype(np.float32) for i in cfg.participants
    }
    result, clipped = Federation(cfg).round(1, vectors)
    assert_close(result, clipped_sum(vectors, cfg.participants), 3, 3)
    assert all(count > 0 for count in clipped.values())
