"""One SecAgg+ round's sum at the server: the masked vectors added up, the encrypted shares
kept for the unmasking exchange, and the masks removed from the sum with the shares the
active sites return.

`consortia.server.secure_aggregation.session.SecAggServer` opens one `MaskedSum` per round
and runs it stage by stage; every problem raises `SecAggError` naming the stage and the
node, which ends the round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from consortia.common.secure_aggregation.arithmetic import (
    add_mask,
    dequantise_sum,
    quantisation_levels,
    self_mask_key,
    subtract_mask,
)
from consortia.common.secure_aggregation.config import SecAggConfig, SecAggError
from consortia.common.secure_aggregation.crypto import combine_secret

__all__ = [
    "MASKED_STAGE",
    "UNMASK_STAGE",
    "MaskedAnswers",
    "MaskedSum",
    "UnmaskAnswers",
    "refuse_stranger",
]

_log = logging.getLogger("consortia.server.secagg")
_SECRET_BYTES = 32
_SEED_KEY, _PAIR_KEY = "b", "pair"

MASKED_STAGE = "collect masked vectors"
"""The stage that adds up the masked vectors of the round's `train` replies."""

UNMASK_STAGE = "unmask"
"""The stage that removes the masks with the shares the active sites return."""

MaskedAnswers = Mapping[int, tuple[npt.NDArray[np.uint32], Mapping[int, bytes]]]
UnmaskAnswers = Mapping[int, Mapping[str, Mapping[int, bytes]]]
_PairShares = dict[tuple[int, int], list[bytes]]


def refuse_stranger(node: Any, allowed: Iterable[int], stage: str) -> None:
    """Raise `SecAggError` if `node` is not one of the sites `allowed` to answer `stage`."""
    if node not in allowed:
        raise SecAggError(
            f"secagg stage '{stage}': answer from node {node}, which is not expected in this stage"
        )


class MaskedSum:
    """The masked sum of one round of a session (`config`) over its `present` sites."""

    def __init__(self, config: SecAggConfig, round_number: int, present: tuple[int, ...]) -> None:
        self.config = config
        self.round = round_number
        self.present = present
        self._ciphertexts: dict[int, dict[int, bytes]] = {}
        self._total = np.zeros(config.vector_size, dtype=np.uint32)

    # --- the masked vectors ----------------------------------------------------------------

    def add(self, vectors: MaskedAnswers) -> list[int]:
        """Check and add up the round's `train` answers (per site: its masked vector and
        its encrypted shares by destination); keeps the shares for the unmasking and
        returns the active sites."""
        for node, answer in vectors.items():
            self._check_answer(node, answer)
        active = sorted(vectors)
        t = self.config.threshold
        if len(active) < t:
            raise SecAggError(
                f"secagg stage '{MASKED_STAGE}': {len(active)} of {len(self.present)} sites "
                f"answered, at least {t} needed (threshold)"
            )
        for node in active:
            holders = [peer for peer in self.config.group_in(node, self.present) if peer in vectors]
            if len(holders) < t:
                raise SecAggError(
                    f"secagg stage '{MASKED_STAGE}': only {len(holders)} holders of node "
                    f"{node}'s shares answered, at least {t} needed (threshold)"
                )
        for node in active:
            np.add(self._total, vectors[node][0], out=self._total)
            for dest, ciphertext in vectors[node][1].items():
                if dest in vectors:
                    self._ciphertexts.setdefault(dest, {})[node] = ciphertext
        return active

    def _check_answer(self, node: int, answer: Any) -> None:
        refuse_stranger(node, self.present, MASKED_STAGE)
        size = self.config.vector_size
        if not isinstance(answer, tuple | list) or len(answer) != 2:
            raise SecAggError(f"secagg: the answer of node {node} is not (vector, shares)")
        vector, ciphertexts = answer
        if (
            not isinstance(vector, np.ndarray)
            or vector.dtype != np.uint32
            or vector.shape != (size,)
        ):
            raise SecAggError(
                f"secagg: the masked vector of node {node} is not a uint32 vector of {size} values"
            )
        expected = set(self.config.neighbours_in(node, self.present))
        if not isinstance(ciphertexts, Mapping) or set(ciphertexts) != expected:
            got = sorted(ciphertexts) if isinstance(ciphertexts, Mapping) else "?"
            raise SecAggError(
                f"secagg: node {node} sent shares for nodes {got}, expected {sorted(expected)}"
            )
        if not all(isinstance(ct, bytes) and ct for ct in ciphertexts.values()):
            raise SecAggError(f"secagg: node {node} sent empty or non-bytes shares")

    def shares_for(self, node: int) -> dict[int, bytes]:
        """The encrypted shares the round's active neighbours of `node` made for it."""
        return dict(self._ciphertexts.get(node, {}))

    # --- unmasking -------------------------------------------------------------------------

    def unmask(self, active: tuple[int, ...], shares: UnmaskAnswers) -> npt.NDArray[np.float64]:
        """Remove the masks with the unmask answers of the `active` sites; returns the float64
        sum of their clipped updates."""
        gone = self._gone(active)
        b_shares, pair_shares = self._collect(set(active), gone, shares)
        t = self.config.threshold
        if len(shares) < t:
            raise SecAggError(
                f"secagg stage '{UNMASK_STAGE}': {len(shares)} of {len(active)} sites "
                f"answered, at least {t} needed (threshold)"
            )
        self._remove_masks(b_shares, pair_shares)
        return self._bounded_sum(len(active))

    def _gone(self, active: tuple[int, ...]) -> dict[int, list[int]]:
        """Each active node's neighbours in the round that dropped out of it."""
        dropped = {node for node in self.present if node not in active} if active else set()
        return {
            node: [
                peer for peer in self.config.neighbours_in(node, self.present) if peer in dropped
            ]
            for node in active
        }

    def _collect(
        self, active: set[int], gone: dict[int, list[int]], shares: UnmaskAnswers
    ) -> tuple[dict[int, list[bytes]], _PairShares]:
        """The shares of each active node's self-mask seed and of each of its pairwise mask
        keys with a dropped neighbour, as the holders sent them."""
        b_shares: dict[int, list[bytes]] = {node: [] for node in active}
        pair_shares: _PairShares = {(node, peer): [] for node in active for peer in gone[node]}
        for holder, answer in shares.items():
            refuse_stranger(holder, active, UNMASK_STAGE)
            if not isinstance(answer, Mapping) or not set(answer) <= {_SEED_KEY, _PAIR_KEY}:
                raise SecAggError(f"secagg: the unmask answer of node {holder} is malformed")
            group = set(self.config.group_in(holder, self.present)) & active
            for node, share in answer.get(_SEED_KEY, {}).items():
                if node not in group:
                    raise SecAggError(
                        f"secagg: node {holder} sent a seed share for node {node}, "
                        "not an active member of its group"
                    )
                b_shares[node].append(share)
            for node, joined in answer.get(_PAIR_KEY, {}).items():
                if node not in group or not gone[node]:
                    raise SecAggError(
                        f"secagg: node {holder} sent pairwise key shares for node {node}, "
                        "not an active member of its group with dropped neighbours"
                    )
                if not isinstance(joined, bytes) or len(joined) % len(gone[node]):
                    raise SecAggError(
                        f"secagg: node {holder}'s shares for node {node} are malformed"
                    )
                step = len(joined) // len(gone[node])
                for at, peer in enumerate(gone[node]):
                    pair_shares[node, peer].append(joined[at * step : (at + 1) * step])
        return b_shares, pair_shares

    def _remove_masks(self, b_shares: dict[int, list[bytes]], pair_shares: _PairShares) -> None:
        """Subtract each active node's self mask and undo its pairwise masks with dropped
        neighbours, from secrets rebuilt out of `threshold` shares each."""
        cfg, t, total = self.config, self.config.threshold, self._total
        for node in sorted(b_shares):
            what = f"secagg stage '{UNMASK_STAGE}': self-mask seed of node {node}"
            seed = combine_secret(b_shares[node], t, what)
            if len(seed) != _SECRET_BYTES:
                raise SecAggError(f"{what} is malformed")
            subtract_mask(total, self_mask_key(seed, cfg.session, self.round, node))
        for (node, peer), parts in sorted(pair_shares.items()):
            what = (
                f"secagg stage '{UNMASK_STAGE}': mask key of node {node} with dropped node {peer}"
            )
            key = combine_secret(parts, t, what)
            if len(key) != _SECRET_BYTES:
                raise SecAggError(f"{what} is malformed")
            # `node` added this mask if node < peer and subtracted it otherwise
            if node < peer:
                subtract_mask(total, key)
            else:
                add_mask(total, key)

    def _bounded_sum(self, count: int) -> npt.NDArray[np.float64]:
        """The unmasked sum of `count` updates as float64, refused when it leaves the range
        that clipped updates can reach."""
        # Bounded influence (F5): each clipped value quantises to [0, Q], so the exact sum
        # of m vectors lies in [0, m Q], i.e. [-m c, m c]. A site that skipped the clipping
        # (or wrapped its values modulo 2^32) shows as a coordinate beyond it.
        cfg, total = self.config, self._total
        limit = count * quantisation_levels(len(self.present))
        outside = int(np.count_nonzero(total > limit))
        if outside:
            raise SecAggError(
                f"secagg stage '{UNMASK_STAGE}': the unmasked sum of {count} sites leaves "
                f"[-{count} c, {count} c] (c = {cfg.clip_range}) at {outside} "
                "coordinates: a site sent values outside the clip range; round refused"
            )
        return dequantise_sum(total, cfg.clip_range, len(self.present), count)
