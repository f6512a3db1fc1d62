"""The shares one site gives one member of its group in a round, and their byte layout.

In round `r` a site `i` Shamir-shares, among its group (itself and its neighbours taking
part in the round), its fresh self-mask seed `b` and, separately, each of its pairwise
mask keys with those neighbours. Member `h` gets one `ShareBundle`: its share of `b` and
its share of each pairwise key, named by the neighbour. The bundle travels encrypted for
`h` (`seal_bundle`), through the server, and is opened only at unmasking
(`open_bundle`), which refuses a bundle whose header names another session, round,
sender or receiver.

Layout (big-endian): session, round, sender, receiver (8 bytes each), share length and
number of pairwise shares (2 bytes each), the share of `b`, then per neighbour its id
(8 bytes) and the share.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from consortia.common.secure_aggregation.config import SecAggError
from consortia.common.secure_aggregation.crypto import open_sealed, seal

__all__ = ["ShareBundle", "open_bundle", "seal_bundle"]

_HEADER = struct.Struct(">QQQQHH")
_NODE = struct.Struct(">Q")


@dataclass(frozen=True)
class ShareBundle:
    """`sender`'s shares for `receiver` in one round of one session."""

    session: int
    round: int
    sender: int
    receiver: int
    b_share: bytes
    pair_shares: Mapping[int, bytes] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The byte layout described in the module docstring."""
        length = len(self.b_share)
        if any(len(share) != length for share in self.pair_shares.values()):
            raise SecAggError("the shares of one bundle must have the same length")
        parts = [
            _HEADER.pack(
                self.session,
                self.round,
                self.sender,
                self.receiver,
                length,
                len(self.pair_shares),
            ),
            self.b_share,
        ]
        for node in sorted(self.pair_shares):
            parts += [_NODE.pack(node), self.pair_shares[node]]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> ShareBundle:
        """Parse `to_bytes`; raises `SecAggError` naming `what` if malformed."""
        if len(data) < _HEADER.size:
            raise SecAggError(f"{what} are truncated")
        session, round_number, sender, receiver, length, count = _HEADER.unpack_from(data)
        if len(data) != _HEADER.size + length + count * (_NODE.size + length):
            raise SecAggError(f"{what} have the wrong length")
        at = _HEADER.size
        b_share = data[at : at + length]
        at += length
        pairs: dict[int, bytes] = {}
        for _ in range(count):
            (node,) = _NODE.unpack_from(data, at)
            at += _NODE.size
            pairs[node] = data[at : at + length]
            at += length
        if len(pairs) != count:
            raise SecAggError(f"{what} name a neighbour twice")
        return cls(session, round_number, sender, receiver, b_share, pairs)

    def check(self, session: int, round_number: int, sender: int, receiver: int) -> None:
        """Refuse a bundle made for another session, round, sender or receiver."""
        expected = (session, round_number, sender, receiver)
        got = (self.session, self.round, self.sender, self.receiver)
        if got != expected:
            raise SecAggError(
                f"the shares from node {sender} were made for session {got[0]}, round "
                f"{got[1]}, from node {got[2]} to node {got[3]}; expected session "
                f"{session}, round {round_number}, from node {sender} to node {receiver}"
            )


def seal_bundle(key: bytes, bundle: ShareBundle) -> bytes:
    """`bundle` encrypted with the Fernet key that its sender and receiver share."""
    return seal(key, bundle.to_bytes())


def open_bundle(
    key: bytes, ciphertext: bytes, *, session: int, round_number: int, sender: int, receiver: int
) -> ShareBundle:
    """Decrypt and check a bundle that `sender` sealed for `receiver` in the given round."""
    what = f"the shares from node {sender}"
    bundle = ShareBundle.from_bytes(open_sealed(key, ciphertext, what), what)
    bundle.check(session, round_number, sender, receiver)
    return bundle
