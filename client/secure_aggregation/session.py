"""A training site's side of a secure-aggregation (SecAgg+) session.

A session starts with `start` (two long-lived key pairs; the public keys go to the
server) and `receive_keys` (the neighbours' public keys, forwarded by the server with
the next `train` message). Then each round costs the site one `mask` (inside `train`:
the update clipped, quantised and masked as uint32, plus encrypted shares of the round's
fresh secrets for each neighbour) and one `unmask` (the shares the server needs to
remove the masks). Each call may run in a separate process: in between, the caller
stores `to_state()` in Flower's `context.state` and rebuilds the client with
`from_state`.

Safety rules kept here (docs/secure-aggregation.md): rounds are masked in increasing
order and each is unmasked at most once, right after it was masked; a site reveals its
share of a node's self-mask seed only if the server lists that node as active, and its
share of a pairwise mask key only for a pair of an active node and a dropped one, never
for a node listed both ways; it refuses to unmask when fewer than `threshold` of its
group are active, and opens only shares made for this session, round and receiver.
Nothing it reveals concerns another round: the session's private keys never leave it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from consortia.client.secure_aggregation.state import ClientState, Peer, Stage
from consortia.common.secure_aggregation.arithmetic import (
    add_mask,
    pair_mask_key,
    quantise,
    self_mask_key,
    subtract_mask,
)
from consortia.common.secure_aggregation.bundle import ShareBundle, open_bundle, seal_bundle
from consortia.common.secure_aggregation.config import ConfigValue, SecAggConfig, SecAggError
from consortia.common.secure_aggregation.crypto import (
    ecdh_secret,
    encryption_key,
    generate_private_key,
    private_key_bytes,
    private_key_from_bytes,
    public_key_bytes,
    public_key_from_bytes,
    split_secret,
)

__all__ = ["SecAggClient"]

_log = logging.getLogger("consortia.client.secagg")
_SEED_BYTES = 32
_MAX_ROUND = 2**64
_SEED_KEY, _PAIR_KEY = "b", "pair"


class SecAggClient:
    """The secure-aggregation state of one site for one session."""

    def __init__(self, state: ClientState) -> None:
        self._s = state

    @property
    def config(self) -> SecAggConfig:
        """The session's parameters."""
        return self._s.config

    @property
    def node_id(self) -> int:
        """This site's Flower node id."""
        return self._s.node_id

    @property
    def stage(self) -> str:
        """'started', 'ready' (for the next round) or 'masked' (unmasking pending)."""
        return str(self._s.stage)

    @property
    def last_round(self) -> int:
        """The last round this site masked in the session (-1 if none)."""
        return self._s.last_round

    @classmethod
    def start(cls, config: SecAggConfig, node_id: int) -> tuple[SecAggClient, dict[str, bytes]]:
        """Session setup: fresh key pairs; returns the client and its public keys."""
        config.neighbours_of(node_id)  # raises if not a participant
        sk_c, sk_s = generate_private_key(), generate_private_key()
        state = ClientState(
            config=config,
            node_id=node_id,
            stage=Stage.STARTED,
            sk_c=private_key_bytes(sk_c),
            sk_s=private_key_bytes(sk_s),
        )
        _log.debug("node %d: secagg session %d keys made", node_id, config.session)
        client = cls(state)
        return client, client.public_keys()

    def public_keys(self) -> dict[str, bytes]:
        """This site's two public keys (as returned by `start`)."""
        return {
            name: public_key_bytes(private_key_from_bytes(secret, "own key").public_key())
            for name, secret in (("c", self._s.sk_c), ("s", self._s.sk_s))
        }

    def receive_keys(self, public_keys: Mapping[int, Mapping[str, bytes]]) -> None:
        """Session setup: the public keys of this site's neighbours (and its own, echoed).

        May be called again in the session (e.g. with every `train` message): keys seen
        before must not change.
        """
        me, s = self.node_id, self._s
        own = public_keys.get(me)
        if not isinstance(own, Mapping) or dict(own) != self.public_keys():
            raise SecAggError(f"node {me}: the server did not echo this node's own public keys")
        allowed = set(self.config.neighbours_of(me))
        new: dict[int, tuple[bytes, bytes]] = {}
        for node, keys in public_keys.items():
            if node == me:
                continue
            if node not in allowed:
                raise SecAggError(f"node {me}: got public keys of node {node}, not a neighbour")
            if not isinstance(keys, Mapping) or set(keys) != {"c", "s"}:
                raise SecAggError(f"node {me}: the public keys of node {node} are malformed")
            pair = (  # canonical encodings, so that equal keys compare equal
                public_key_bytes(public_key_from_bytes(keys["c"], f"key 'c' of node {node}")),
                public_key_bytes(public_key_from_bytes(keys["s"], f"key 's' of node {node}")),
            )
            known = s.peers.get(node)
            if known is not None and (known.pk_c, known.pk_s) != pair:
                raise SecAggError(
                    f"node {me}: the public keys of node {node} changed within session "
                    f"{self.config.session}; refused"
                )
            if known is None:
                new[node] = pair
        every = [*own.values()] + [k for p in s.peers.values() for k in (p.pk_c, p.pk_s)]
        every += [key for pair in new.values() for key in pair]
        if len(set(every)) != len(every):
            raise SecAggError(f"node {me}: some public keys of its neighbours are identical")
        sk_c = private_key_from_bytes(s.sk_c, "own key")
        sk_s = private_key_from_bytes(s.sk_s, "own key")
        for node, (pk_c, pk_s) in new.items():
            s.peers[node] = Peer(
                pk_c=pk_c,
                pk_s=pk_s,
                encryption_key=encryption_key(sk_c, public_key_from_bytes(pk_c, "key")),
                pair_secret=ecdh_secret(sk_s, public_key_from_bytes(pk_s, "key")),
            )
        if s.stage is Stage.STARTED:
            s.stage = Stage.READY
        _log.debug("node %d: secagg keys of %d neighbours", me, len(s.peers))

    def mask(
        self,
        round_number: int,
        participants: Sequence[int],
        vector: npt.NDArray[np.float32],
        *,
        context: bytes = b"",
    ) -> tuple[npt.NDArray[np.uint32], dict[int, bytes], int]:
        """One round's masking (inside `train`).

        `participants` are the session's sites taking part in the round (this one
        included); `vector` is the float32 update (1-D, `vector_size` long, already
        scaled); `context` is bound into the pairwise masks (what every site of the round
        must have been told alike). Returns the masked, quantised update (uint32), the
        encrypted shares for each neighbour taking part (by destination) and how many
        values were clipped.
        """
        cfg, me, s = self.config, self.node_id, self._s
        present, near = self._mask_round(round_number, participants)
        _check_update(f"node {me}: round {round_number}", vector, cfg.vector_size)
        masked, clipped = quantise(vector, cfg.clip_range, len(present))
        seed = secrets.token_bytes(_SEED_BYTES)
        add_mask(masked, self_mask_key(seed, cfg.session, round_number, me))
        pair_keys: dict[int, bytes] = {}
        for node in near:
            key = pair_mask_key(
                s.peers[node].pair_secret, cfg.session, round_number, me, node, context=context
            )
            if me < node:
                add_mask(masked, key)
            else:
                subtract_mask(masked, key)
            pair_keys[node] = key
        ciphertexts, own = _seal_shares(s, round_number, sorted((*near, me)), seed, pair_keys)
        s.last_round, s.round_participants, s.own_bundle = round_number, present, own
        s.stage = Stage.MASKED
        _log.debug("node %d: secagg round %d masked (%d clipped)", me, round_number, clipped)
        return masked, ciphertexts, clipped

    def _mask_round(
        self, round_number: int, participants: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The round's participants and this site's neighbours among them, or `SecAggError`
        when this site may not mask the round."""
        cfg, me, s = self.config, self.node_id, self._s
        where = f"node {me}: round {round_number}"
        if s.stage is Stage.STARTED:
            raise SecAggError(f"{where}: cannot mask before receiving the neighbours' keys")
        if isinstance(round_number, bool) or not isinstance(round_number, int):
            raise SecAggError(f"{where}: the round number must be an integer")
        if not s.last_round < round_number < _MAX_ROUND:
            raise SecAggError(
                f"{where}: cannot mask, rounds must increase (last masked: {s.last_round})"
            )
        present = cfg.round_participants(participants, where)
        if me not in present:
            raise SecAggError(f"{where}: this node is not among the round's participants")
        near = cfg.neighbours_in(me, present)
        missing = [node for node in near if node not in s.peers]
        if missing:
            raise SecAggError(
                f"{where}: no public keys of neighbour {missing[0]} in session {cfg.session}"
            )
        holders = (*near, me)
        if len(holders) < cfg.threshold:
            raise SecAggError(
                f"{where}: mask: {len(holders)} of its group take part, {cfg.threshold} needed"
            )
        return present, near

    def unmask(
        self,
        round_number: int,
        active: Sequence[int],
        dropped: Sequence[int],
        ciphertexts: Mapping[int, bytes],
    ) -> dict[str, dict[int, bytes]]:
        """One round's unmasking: shares that let the server remove the masks.

        `active` and `dropped` are the round's participants that did and did not return
        a masked vector; `ciphertexts` are the shares the active neighbours made for this
        site, by sender. Returns `{"b": {k: share}, "pair": {k: shares}}`: this site's
        share of the self-mask seed of every active member `k` of its group, and, for
        each such `k` with dropped neighbours, its shares of `k`'s pairwise mask keys
        with them, concatenated in increasing order of the dropped neighbour's id.
        """
        cfg, me, s = self.config, self.node_id, self._s
        where = f"node {me}: round {round_number}"
        if s.stage is not Stage.MASKED or round_number != s.last_round:
            raise SecAggError(
                f"{where}: cannot unmask (stage '{s.stage}', last masked round {s.last_round})"
            )
        present = s.round_participants
        live = _live_group(where, cfg, me, present, active, dropped)
        senders = set(live) - {me}
        for node in ciphertexts:
            if node not in senders:
                raise SecAggError(f"{where}: got shares from node {node}, not an active neighbour")
        drop = set(dropped)
        out: dict[str, dict[int, bytes]] = {_SEED_KEY: {}, _PAIR_KEY: {}}
        for node in live:
            bundle = self._bundle_from(node, round_number, ciphertexts)
            near = cfg.neighbours_in(node, present)
            if sorted(bundle.pair_shares) != list(near):
                raise SecAggError(
                    f"{where}: the shares from node {node} do not match its neighbours"
                )
            out[_SEED_KEY][node] = bundle.b_share
            gone = [peer for peer in near if peer in drop]
            if gone:
                out[_PAIR_KEY][node] = b"".join(bundle.pair_shares[peer] for peer in gone)
        s.end_round()
        _log.debug("node %d: secagg round %d unmask shares", me, round_number)
        return out

    def _bundle_from(
        self, node: int, round_number: int, ciphertexts: Mapping[int, bytes]
    ) -> ShareBundle:
        """The shares active group member `node` made for this site in the round (this
        site's own, kept since `mask`, when `node` is this site)."""
        cfg, me, s = self.config, self.node_id, self._s
        if node == me:
            bundle = ShareBundle.from_bytes(s.own_bundle, "own shares")
            bundle.check(cfg.session, round_number, me, me)
            return bundle
        if node not in ciphertexts:
            raise SecAggError(
                f"node {me}: round {round_number}: no shares from active neighbour {node}"
            )
        return open_bundle(
            s.peers[node].encryption_key,
            ciphertexts[node],
            session=cfg.session,
            round_number=round_number,
            sender=node,
            receiver=me,
        )

    def to_state(self) -> dict[str, ConfigValue]:
        """ConfigRecord-compatible values that `from_state` turns back into this client."""
        return self._s.to_record()

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SecAggClient:
        """The client stored by `to_state` (validated; raises `SecAggError` if malformed)."""
        return cls(ClientState.from_record(state))


def _check_update(where: str, vector: Any, size: int) -> None:
    """`SecAggError` unless `vector` is a 1-D float32 numpy array of `size` values."""
    if not isinstance(vector, np.ndarray) or vector.dtype != np.float32 or vector.ndim != 1:
        raise SecAggError(f"{where}: the update must be a 1-D float32 numpy array")
    if vector.size != size:
        raise SecAggError(f"{where}: the update has {vector.size} values, expected {size}")


def _seal_shares(
    s: ClientState,
    round_number: int,
    order: list[int],
    seed: bytes,
    pair_keys: dict[int, bytes],
) -> tuple[dict[int, bytes], bytes]:
    """Shamir shares of the round's self-mask `seed` and pairwise mask keys for each
    holder in `order`: encrypted for each neighbour (by destination), and this site's own
    (serialised, kept for the unmasking)."""
    cfg, me = s.config, s.node_id
    b_shares = split_secret(seed, cfg.threshold, len(order))
    pair_shares = {
        node: split_secret(key, cfg.threshold, len(order)) for node, key in pair_keys.items()
    }
    ciphertexts: dict[int, bytes] = {}
    own = b""
    for index, holder in enumerate(order):
        bundle = ShareBundle(
            session=cfg.session,
            round=round_number,
            sender=me,
            receiver=holder,
            b_share=b_shares[index],
            pair_shares={node: shares[index] for node, shares in pair_shares.items()},
        )
        if holder == me:
            own = bundle.to_bytes()
        else:
            ciphertexts[holder] = seal_bundle(s.peers[holder].encryption_key, bundle)
    return ciphertexts, own


def _live_group(
    where: str,
    cfg: SecAggConfig,
    me: int,
    present: tuple[int, ...],
    active: Sequence[int],
    dropped: Sequence[int],
) -> list[int]:
    """The active members of this site's group in the round, after checking the server's
    `active` and `dropped` lists against the round's participants (`present`)."""
    act, drop = set(active), set(dropped)
    both = act & drop
    if both:
        raise SecAggError(f"{where}: unmask lists node {min(both)} as active and dropped")
    if len(act) != len(active) or len(drop) != len(dropped) or act | drop != set(present):
        raise SecAggError(f"{where}: unmask lists do not match the round's participants")
    if me not in act:
        raise SecAggError(f"{where}: unmask does not list this node as active")
    live = [node for node in cfg.group_in(me, present) if node in act]
    if len(live) < cfg.threshold:
        raise SecAggError(
            f"{where}: unmask: {len(live)} of its group active, {cfg.threshold} needed; refused"
        )
    return live
