"""The parameters of one secure-aggregation (SecAgg+) session, shared by the server and sites.

A *session* spans many training rounds: its sites exchange long-lived public keys once
(docs/secure-aggregation.md), then every round costs one extra message exchange. The
server builds a `SecAggConfig` per session and sends it to every site as a Flower
ConfigRecord (`to_config`); a site rebuilds and validates it (`from_config`). Both sides
derive the same SecAgg+ neighbour graph from it (`neighbours_of`), and, for a round in
which only some of the session's sites take part, the same restriction of it
(`neighbours_in`, `group_in`).

Neighbour graph (Bell et al. 2020): the participants are placed on a ring in an order
that is a public pseudo-random function of the session id (SHA-256 of the session and
the node id), and each node is joined to the `ceil(k/2)` nodes on either side of it. So
`neighbours` is rounded up to an even number; when it reaches `n - 1` the graph is
complete and the protocol is classic SecAgg (Bonawitz et al. 2017).

Threshold: each round, a node's secrets are Shamir-shared among its *group* (itself and
its neighbours that take part in the round) with reconstruction threshold `threshold`.
It must satisfy `group_size / 2 < threshold <= group_size` and `threshold >= 2` for the
session's full groups; a node may take part in a round only while at least `threshold`
of its group take part too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from consortia.common.errors import ConsortiaError

__all__ = [
    "MAX_PARTICIPANTS",
    "MODULUS_BITS",
    "PROTOCOL",
    "ConfigValue",
    "SecAggConfig",
    "SecAggError",
    "default_threshold",
    "group_size",
]

PROTOCOL = "consortia-secagg/2"
"""Protocol name and version; it is sent in the config and bound into every derived key."""

MODULUS_BITS = 32
"""Masked vectors are integers modulo 2**32 (uint32: as many bytes as float32)."""

MAX_PARTICIPANTS = 1_000
"""Most sites one session may name (checked before anything is built from the list; a
site with a roster bounds it by the roster, `consortia.common.secure_aggregation.roster`)."""

ConfigValue = (
    int
    | float
    | str
    | bytes
    | bool
    | list[int]
    | list[float]
    | list[str]
    | list[bytes]
    | list[bool]
)
"""A value a Flower ConfigRecord holds (the same union as Flower's)."""

_MAX_ID = 2**64  # Flower node ids (and our session and round numbers) are unsigned 64-bit
_PREFIX = "secagg."


class SecAggError(ConsortiaError):
    """Secure aggregation cannot go on; the message names the stage, node or field."""


def group_size(n: int, neighbours: int) -> int:
    """How many nodes hold shares of one node's secrets: itself plus its neighbours."""
    return min(2 * math.ceil(neighbours / 2), n - 1) + 1


def default_threshold(n: int, neighbours: int | None = None) -> int:
    """A reconstruction threshold for `n` participants: two thirds of a node's group.

    `max(2, ceil(2g/3))` with `g` the group size (`n` for the complete graph, the
    default). Two thirds keeps a clear majority of the group while tolerating a third of
    it dropping out.
    """
    if n < 2:
        raise SecAggError(f"secure aggregation needs at least 2 participants, got {n}")
    g = group_size(n, n - 1 if neighbours is None else neighbours)
    return min(g, max(2, math.ceil(2 * g / 3)))


def _ring_key(session: int, node_id: int) -> bytes:
    data = f"{PROTOCOL}|graph|{session}|{node_id}".encode()
    return hashlib.sha256(data).digest()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SecAggConfig:
    """What every party of one session agrees on.

    `session` identifies the session (bound into every key and ciphertext);
    `participants` are the Flower node ids invited to it (sorted, unique);
    `clip_range` is `c`: every value is clipped to `[-c, c]` before quantisation;
    `vector_size` is the length of the flat float32 update every site masks.
    """

    session: int
    participants: tuple[int, ...]
    threshold: int
    neighbours: int
    clip_range: float
    vector_size: int

    def __post_init__(self) -> None:
        for name in ("session", "threshold", "neighbours", "vector_size"):
            value = getattr(self, name)
            if not _is_int(value):
                raise SecAggError(f"secagg config: '{name}' must be an integer, got {value!r}")
        if not 0 <= self.session < _MAX_ID:
            raise SecAggError(
                f"secagg config: 'session' must be unsigned 64-bit, got {self.session}"
            )
        ids = self.participants
        if isinstance(ids, tuple) and len(ids) > MAX_PARTICIPANTS:
            raise SecAggError(
                f"secagg config: 'participants' names {len(ids)} nodes, at most "
                f"{MAX_PARTICIPANTS} allowed"
            )
        if not isinstance(ids, tuple) or not all(_is_int(i) and 0 <= i < _MAX_ID for i in ids):
            raise SecAggError(
                "secagg config: 'participants' must be a tuple of unsigned 64-bit node ids"
            )
        if list(ids) != sorted(set(ids)):
            raise SecAggError("secagg config: 'participants' must be sorted and unique")
        n = len(ids)
        if n < 2:
            raise SecAggError(f"secagg config: needs at least 2 participants, got {n}")
        if self.neighbours < 1:
            raise SecAggError(f"secagg config: 'neighbours' must be >= 1, got {self.neighbours}")
        g = group_size(n, self.neighbours)
        if not (self.threshold >= 2 and g < 2 * self.threshold and self.threshold <= g):
            raise SecAggError(
                f"secagg config: 'threshold' {self.threshold} must be at least 2, more than "
                f"half of and at most the group size {g} ({n} participants, "
                f"{g - 1} neighbours each)"
            )
        clip = self.clip_range
        if isinstance(clip, bool) or not isinstance(clip, int | float):
            raise SecAggError(f"secagg config: 'clip_range' must be a number, got {clip!r}")
        if not (math.isfinite(clip) and clip > 0):
            raise SecAggError(f"secagg config: 'clip_range' must be finite and > 0, got {clip}")
        if self.vector_size < 1:
            raise SecAggError(f"secagg config: 'vector_size' must be >= 1, got {self.vector_size}")

    @property
    def n(self) -> int:
        """The number of sites invited to the session."""
        return len(self.participants)

    @cached_property
    def _members(self) -> frozenset[int]:
        return frozenset(self.participants)

    @cached_property
    def _ring(self) -> tuple[tuple[int, ...], dict[int, int]]:
        """The session's ring and each node's position on it (sparse graphs only)."""
        ring = tuple(sorted(self.participants, key=lambda i: _ring_key(self.session, i)))
        return ring, {node: pos for pos, node in enumerate(ring)}

    def neighbours_of(self, node_id: int) -> tuple[int, ...]:
        """The sorted neighbours of `node_id` (never itself), the same at every party.

        Computed per node (O(n) for the complete graph, O(k) on the ring), so that no
        party ever holds the whole graph (F12: O(n^2) for the complete graph)."""
        if not _is_int(node_id) or node_id not in self._members:
            raise SecAggError(f"node {node_id} is not a participant of this session")
        n = self.n
        if group_size(n, self.neighbours) == n:
            return tuple(j for j in self.participants if j != node_id)
        half = math.ceil(self.neighbours / 2)
        ring, positions = self._ring
        pos = positions[node_id]
        return tuple(sorted({ring[(pos + off) % n] for off in range(-half, half + 1) if off}))

    def group_of(self, node_id: int) -> tuple[int, ...]:
        """`node_id` and its neighbours, sorted: the holders of its secret shares."""
        return tuple(sorted((*self.neighbours_of(node_id), node_id)))

    def neighbours_in(self, node_id: int, present: Collection[int]) -> tuple[int, ...]:
        """The neighbours of `node_id` that are in `present` (e.g. a round's participants)."""
        return tuple(j for j in self.neighbours_of(node_id) if j in present)

    def group_in(self, node_id: int, present: Collection[int]) -> tuple[int, ...]:
        """`node_id` and its neighbours that are in `present`, sorted."""
        return tuple(j for j in self.group_of(node_id) if j == node_id or j in present)

    def round_participants(self, nodes: Sequence[int], what: str) -> tuple[int, ...]:
        """Validate a round's participants (distinct sites of the session); sorted.

        `what` names the caller in errors, e.g. "node 17: round 4".
        """
        if isinstance(nodes, str | bytes) or not all(_is_int(i) for i in nodes):
            raise SecAggError(f"{what}: the participants must be a list of node ids")
        if len(set(nodes)) != len(nodes):
            raise SecAggError(f"{what}: the participants repeat a node id")
        strangers = sorted(set(nodes) - set(self.participants))
        if strangers:
            raise SecAggError(
                f"{what}: node {strangers[0]} is not a participant of session {self.session}"
            )
        return tuple(sorted(nodes))

    def to_config(self) -> dict[str, ConfigValue]:
        """ConfigRecord-compatible values (keys prefixed `secagg.`; give it its own record)."""
        return {
            f"{_PREFIX}protocol": PROTOCOL,
            f"{_PREFIX}modulus_bits": MODULUS_BITS,
            f"{_PREFIX}session": self.session,
            f"{_PREFIX}participants": list(self.participants),
            f"{_PREFIX}threshold": self.threshold,
            f"{_PREFIX}neighbours": self.neighbours,
            f"{_PREFIX}clip_range": float(self.clip_range),
            f"{_PREFIX}vector_size": self.vector_size,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SecAggConfig:
        """Rebuild and validate a config sent by `to_config`; raise `SecAggError` if bad."""

        def field(name: str) -> Any:
            key = f"{_PREFIX}{name}"
            if key not in config:
                raise SecAggError(f"secagg config: missing field '{key}'")
            return config[key]

        if field("protocol") != PROTOCOL:
            raise SecAggError(
                f"secagg config: protocol {field('protocol')!r} is not {PROTOCOL!r} "
                "(server and site run different versions)"
            )
        if field("modulus_bits") != MODULUS_BITS:
            raise SecAggError(
                f"secagg config: modulus_bits {field('modulus_bits')!r} is not {MODULUS_BITS}"
            )
        participants = field("participants")
        if not isinstance(participants, list | tuple):
            raise SecAggError("secagg config: 'participants' must be a list of node ids")
        clip = field("clip_range")
        if _is_int(clip):
            clip = float(clip)
        return cls(
            session=field("session"),
            participants=tuple(participants),
            threshold=field("threshold"),
            neighbours=field("neighbours"),
            clip_range=clip,
            vector_size=field("vector_size"),
        )
