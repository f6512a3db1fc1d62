"""The server's side of a secure-aggregation (SecAgg+) session.

Setup, once per session: the server collects the sites' public keys
(`receive_public_keys`) and forwards each site its neighbours' keys (with the next
`train` message). Then per round: `begin_round` names the round's participants (some of
the session's sites); `receive_masked` adds up the masked uint32 vectors that come back
with the `train` replies and keeps the encrypted shares that came with them;
`unmask_request` says what to send each active site for the one unmasking exchange; and
`unmask` removes the masks from the shares the sites return: the self mask of every
site whose vector is in the sum, and the pairwise masks that active sites share with
sites that dropped out of the round. The server learns the sum of the active sites'
clipped, quantised updates and who dropped out, nothing else (against an
honest-but-curious server), and nothing it learns in one round concerns another.

Any `SecAggError` in a round (too few sites left, or malformed input, naming the node)
ends that round for good; the session goes on with the next round. A failed key
advertisement ends the session: start a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from consortia.common.secure_aggregation.config import SecAggConfig, SecAggError
from consortia.common.secure_aggregation.crypto import public_key_bytes, public_key_from_bytes
from consortia.common.secure_aggregation.roster import KeyAdvert
from consortia.server.secure_aggregation.masked_sum import (
    MASKED_STAGE,
    UNMASK_STAGE,
    MaskedAnswers,
    MaskedSum,
    UnmaskAnswers,
    refuse_stranger,
)

__all__ = ["SecAggServer"]

_log = logging.getLogger("consortia.server.secagg")
_T = TypeVar("_T")
_KEYS, _BEGIN, _MASKED, _UNMASK, _DONE = (
    "advertise keys",
    "begin round",
    MASKED_STAGE,
    UNMASK_STAGE,
    "done",
)


class SecAggServer:
    """Runs the server's half of one SecAgg+ session for `config`."""

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._adverts: dict[int, KeyAdvert] = {}  # the sites' signatures over their keys
        self._session_stage = _KEYS  # _KEYS until the keys are in, then _BEGIN
        self._session_failed = False
        self._round = -1
        self._stage = _DONE  # the stage of the current round whose answers come next
        self._round_failed = False
        self._present: tuple[int, ...] = ()
        self._active: tuple[int, ...] = ()
        self._sum: MaskedSum | None = None  # the current round's, until it is unmasked

    # --- what the caller may ask -----------------------------------------------------------

    @property
    def members(self) -> tuple[int, ...]:
        """The sites that completed the session's setup (sent valid public keys)."""
        return tuple(sorted(self._keys))

    @property
    def round(self) -> int:
        """The current (or last) round of the session; -1 before the first."""
        return self._round

    @property
    def participants(self) -> tuple[int, ...]:
        """The current round's participants."""
        return self._present

    @property
    def active(self) -> tuple[int, ...]:
        """The round's sites whose masked vectors are in the sum (after `receive_masked`)."""
        return self._active

    @property
    def dropped(self) -> tuple[int, ...]:
        """The round's participants that sent no masked vector (after `receive_masked`)."""
        if not self._active:
            return ()
        return tuple(node for node in self._present if node not in self._active)

    def usable(self, participants: Iterable[int]) -> list[int]:
        """The largest part of `participants` that can take part in a round of this session:
        sites that completed the setup, each with at least `threshold` of its group."""
        present = {node for node in participants if node in self._keys}
        while True:
            thin = {
                node
                for node in present
                if len(self.config.group_in(node, present)) < self.config.threshold
            }
            if not thin:
                return sorted(present)
            present -= thin

    def needs_rekey(self, participants: Iterable[int]) -> bool:
        """Whether some of `participants` cannot take part in a round of this session (they
        missed its setup, joined later, or too few of their group take part): a new session
        over them would let them."""
        wanted = sorted(set(participants))
        return self._session_failed or self.usable(wanted) != wanted

    def keys_for(self, node: int) -> dict[int, dict[str, bytes]]:
        """The public keys to forward to `node`: its own and its neighbours' in the session."""
        if node not in self._keys:
            raise SecAggError(f"secagg: node {node} has no keys in session {self.config.session}")
        return {
            peer: {"c": self._keys[peer][0], "s": self._keys[peer][1]}
            for peer in self.config.group_of(node)
            if peer in self._keys
        }

    def adverts_for(self, node: int) -> dict[int, KeyAdvert]:
        """The signatures over the keys `keys_for(node)` returns (of the sites that sent
        one): forwarded with them, each site checks its neighbours' against the roster."""
        return {peer: self._adverts[peer] for peer in self.keys_for(node) if peer in self._adverts}

    # --- session setup ---------------------------------------------------------------------

    def receive_public_keys(
        self,
        keys: Mapping[int, Mapping[str, bytes]],
        adverts: Mapping[int, KeyAdvert] | None = None,
    ) -> dict[int, dict[int, dict[str, bytes]]]:
        """The sites' answers to the session's key advertisement (their public keys and,
        from sites with a registered key, their signatures over them); returns, per site,
        the public keys to forward to it (`keys_for`, with `adverts_for`)."""
        if self._session_failed or self._session_stage != _KEYS:
            raise SecAggError(f"secagg session {self.config.session}: keys were already received")
        strangers = sorted(set(adverts or {}) - set(keys))
        if strangers:
            raise SecAggError(f"secagg: a signature for node {strangers[0]}, which sent no keys")
        self._adverts = dict(adverts or {})
        try:
            return self._receive_public_keys(keys)
        except SecAggError:
            self._session_failed = True
            raise

    def _receive_public_keys(
        self, keys: Mapping[int, Mapping[str, bytes]]
    ) -> dict[int, dict[int, dict[str, bytes]]]:
        seen: dict[bytes, int] = {}
        for node, pair in keys.items():
            refuse_stranger(node, set(self.config.participants), _KEYS)
            if not isinstance(pair, Mapping) or set(pair) != {"c", "s"}:
                raise SecAggError(f"secagg: the public keys of node {node} are malformed")
            for name in ("c", "s"):
                what = f"public key '{name}' of node {node}"
                encoded = public_key_bytes(public_key_from_bytes(pair[name], what))
                if encoded in seen:
                    raise SecAggError(f"secagg: node {node} reuses a key of node {seen[encoded]}")
                seen[encoded] = node
            self._keys[node] = (pair["c"], pair["s"])
        t = self.config.threshold
        if len(self._keys) < t or not self.usable(self._keys):
            raise SecAggError(
                f"secagg stage '{_KEYS}': {len(self._keys)} of {self.config.n} sites answered, "
                f"at least {t} needed (threshold), each with {t} of its group"
            )
        self._session_stage = _BEGIN
        _log.info(
            "secagg session %d: keys of %d of %d sites",
            self.config.session,
            len(self._keys),
            self.config.n,
        )
        return {node: self.keys_for(node) for node in sorted(self._keys)}

    # --- rounds ----------------------------------------------------------------------------

    def begin_round(self, round_number: int, participants: Iterable[int]) -> None:
        """Open round `round_number` (greater than any before in the session) with
        `participants`; refuses sites that cannot take part (see `usable`)."""
        if self._session_failed or self._session_stage != _BEGIN:
            raise SecAggError(
                f"secagg session {self.config.session}: no round before the setup succeeded"
            )
        where = f"secagg stage '{_BEGIN}': round {round_number}"
        if isinstance(round_number, bool) or not isinstance(round_number, int):
            raise SecAggError(f"{where}: the round number must be an integer")
        if not self._round < round_number < 2**64:
            raise SecAggError(f"{where}: rounds must increase (last round: {self._round})")
        present = self.config.round_participants(list(participants), where)
        for node in present:
            if node not in self._keys:
                raise SecAggError(
                    f"{where}: node {node} did not complete the setup of session "
                    f"{self.config.session}; a new session (re-key) is needed"
                )
            group = self.config.group_in(node, present)
            if len(group) < self.config.threshold:
                raise SecAggError(
                    f"{where}: only {len(group)} of node {node}'s group take part, at least "
                    f"{self.config.threshold} needed (threshold)"
                )
        if self._stage not in (_DONE, _BEGIN) and not self._round_failed:
            _log.warning("secagg round %d abandoned before it was unmasked", self._round)
        self._round, self._present, self._active = round_number, present, ()
        self._stage, self._round_failed = _MASKED, False
        self._sum = MaskedSum(self.config, round_number, present)

    def _run(self, stage: str, work: Callable[[], _T]) -> _T:
        if self._round_failed:
            raise SecAggError(f"secagg round {self._round} already failed")
        if self._stage != stage:
            raise SecAggError(
                f"secagg round {self._round}: cannot run stage '{stage}' when expecting "
                f"'{self._stage}'"
            )
        try:
            return work()
        except SecAggError:
            self._round_failed = True
            raise

    def receive_masked(self, vectors: MaskedAnswers) -> tuple[list[int], list[int]]:
        """The round's `train` answers: per site, its masked vector and its encrypted shares
        by destination. Adds up the vectors; returns (active, dropped) node ids."""
        return self._run(_MASKED, lambda: self._receive_masked(vectors))

    def _receive_masked(self, vectors: MaskedAnswers) -> tuple[list[int], list[int]]:
        active = self._open_sum().add(vectors)
        self._active = tuple(active)
        self._stage = _UNMASK
        _log.info(
            "secagg session %d round %d: %d masked vectors, %d dropped",
            self.config.session,
            self._round,
            len(active),
            len(self._present) - len(active),
        )
        return active, list(self.dropped)

    def unmask_request(self, node: int) -> tuple[list[int], list[int], dict[int, bytes]]:
        """What to send active site `node` for unmasking: the round's active and dropped
        sites and the encrypted shares its active neighbours made for it, by sender."""
        if self._round_failed or self._stage != _UNMASK or node not in self._active:
            raise SecAggError(f"secagg round {self._round}: no unmask request for node {node}")
        return list(self._active), list(self.dropped), self._open_sum().shares_for(node)

    def unmask(self, shares: UnmaskAnswers) -> npt.NDArray[np.float64]:
        """The round's unmask answers: removes the masks; returns the float64 sum of the
        active sites' clipped updates."""
        return self._run(_UNMASK, lambda: self._unmask(shares))

    def _unmask(self, shares: UnmaskAnswers) -> npt.NDArray[np.float64]:
        result = self._open_sum().unmask(self._active, shares)
        self._sum = None
        self._stage = _DONE
        _log.info(
            "secagg session %d round %d: sum of %d updates unmasked",
            self.config.session,
            self._round,
            len(self._active),
        )
        return result

    def _open_sum(self) -> MaskedSum:
        if self._sum is None:
            raise SecAggError(f"secagg round {self._round}: no round is open")
        return self._sum
