"""What a site must remember of a secure-aggregation session between messages.

The session's messages (key advertisement, then per round the masking inside `train`
and the unmasking) may run in separate ClientApp processes, so the state travels through
Flower's `context.state` as ConfigRecord-compatible values (ints, bytes, strings and flat
lists of them). It holds the session's private keys, the secrets derived from them for
each neighbour, and, between masking and unmasking, this site's own shares of the round:
it must stay at the site (Flower keeps `context.state` on the SuperNode). A round's
shares are dropped once the round is unmasked or the next round is masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from consortia.common.secagg_config import ConfigValue, SecAggConfig, SecAggError

__all__ = ["ClientState", "Peer", "Stage"]

_KEY_BYTES = 48


class Stage(StrEnum):
    """Where a site is in its session."""

    STARTED = "started"  # key pairs made; the neighbours' public keys not yet received
    READY = "ready"  # may mask the next round
    MASKED = "masked"  # masked round `last_round`; its unmasking is pending


@dataclass(frozen=True)
class Peer:
    """A neighbour's public keys and what this site derived from them."""

    pk_c: bytes
    pk_s: bytes
    encryption_key: bytes  # Fernet key from the two sites' `c` keys
    pair_secret: bytes  # raw ECDH secret of the two sites' `s` keys


@dataclass
class ClientState:
    """One site's secure-aggregation state for one session."""

    config: SecAggConfig
    node_id: int
    stage: Stage
    sk_c: bytes
    sk_s: bytes
    peers: dict[int, Peer] = field(default_factory=dict)
    last_round: int = -1  # the last round masked (-1: none yet)
    round_participants: tuple[int, ...] = ()
    own_bundle: bytes = b""  # this site's own shares of round `last_round`

    def end_round(self) -> None:
        """Forget the round's shares; ready for the next round."""
        self.own_bundle = b""
        self.round_participants = ()
        self.stage = Stage.READY

    def to_record(self) -> dict[str, ConfigValue]:
        """ConfigRecord-compatible values."""
        record = self.config.to_config()
        ids = sorted(self.peers)
        record.update(
            {
                "node_id": self.node_id,
                "stage": str(self.stage.value),
                "sk_c": self.sk_c,
                "sk_s": self.sk_s,
                "peer_ids": ids,
                "peer_c": [self.peers[i].pk_c for i in ids],
                "peer_s": [self.peers[i].pk_s for i in ids],
                "peer_enc": [self.peers[i].encryption_key for i in ids],
                "peer_pair": [self.peers[i].pair_secret for i in ids],
                "last_round": self.last_round,
                "round_participants": list(self.round_participants),
                "own_bundle": self.own_bundle,
            }
        )
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClientState:
        """Rebuild and validate the state stored by `to_record`."""

        def get(name: str, kind: type) -> Any:
            if name not in record:
                raise SecAggError(f"secagg client state: missing field '{name}'")
            value = record[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise SecAggError(f"secagg client state: field '{name}' has the wrong type")
            return value

        def items(name: str, kind: type) -> list[Any]:
            values = get(name, list)
            if not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
                raise SecAggError(f"secagg client state: field '{name}' has the wrong type")
            return list(values)

        config = SecAggConfig.from_config(record)
        node_id = get("node_id", int)
        config.neighbours_of(node_id)
        try:
            stage = Stage(get("stage", str))
        except ValueError:
            raise SecAggError(f"secagg client state: unknown stage {record['stage']!r}") from None
        sk_c, sk_s = get("sk_c", bytes), get("sk_s", bytes)
        if len(sk_c) != _KEY_BYTES or len(sk_s) != _KEY_BYTES:
            raise SecAggError("secagg client state: private keys missing or malformed")
        columns = [
            items("peer_ids", int),
            items("peer_c", bytes),
            items("peer_s", bytes),
            items("peer_enc", bytes),
            items("peer_pair", bytes),
        ]
        if len({len(column) for column in columns}) != 1:
            raise SecAggError("secagg client state: peer lists of different lengths")
        peers = {row[0]: Peer(*row[1:]) for row in zip(*columns, strict=True)}
        if not set(peers) <= set(config.neighbours_of(node_id)):
            raise SecAggError("secagg client state: keys of a node that is not a neighbour")
        own_bundle = get("own_bundle", bytes)
        if (stage is Stage.MASKED) != bool(own_bundle):
            raise SecAggError("secagg client state: the round's own shares do not fit its stage")
        return cls(
            config=config,
            node_id=node_id,
            stage=stage,
            sk_c=sk_c,
            sk_s=sk_s,
            peers=peers,
            last_round=get("last_round", int),
            round_participants=tuple(items("round_participants", int)),
            own_bundle=own_bundle,
        )
