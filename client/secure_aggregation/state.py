"""What a site must remember of a secure-aggregation session between messages.

The session's messages (key advertisement, then per round the masking inside `train`
and the unmasking) may run in separate ClientApp processes, so the state travels through
Flower's `context.state` as ConfigRecord-compatible values (ints, bytes, strings and flat
lists of them). It holds the session's private keys, the secrets derived from them for
each neighbour, and, between masking and unmasking, this site's own shares of the round:
it must stay at the site (Flower keeps `context.state` on the SuperNode). A round's
shares are dropped once the round is unmasked or the next round is masked.

What must outlive the node process is kept on disk instead (`SecureRecord`, one small
JSON file per approved run config in the node's state folder): that the run had a
secure session (so that a restarted node still refuses a plain update, F6), and which
session and participants each round's update was masked for (so that a released update
never enters a second sum, F1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from consortia.common.files import exclusive_lock, write_json_atomic
from consortia.common.secure_aggregation.config import ConfigValue, SecAggConfig, SecAggError

__all__ = ["SECURE_RECORDS_DIR", "ClientState", "Peer", "SecureRecord", "Stage"]

SECURE_RECORDS_DIR = "secagg"  # in the node's state folder
_CONFIG_HASH = re.compile(r"^[0-9a-f]{64}$")
_RECORD_VERSION = 1

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


class SecureRecord:
    """What a site keeps on disk about secure aggregation in one approved run config
    (`<state>/secagg/<config hash>.json`, owner-only): whether a secure session was ever
    started (F6: a restart does not forget it), and per round the session and
    participants its update was masked for (F1: an update enters at most one sum).

    Keyed on the approved config's hash, not on a run id the server chooses: another
    Flower run of the same approved config is the same study. A record that cannot be
    read refuses (the site sits out) rather than starting afresh.
    """

    def __init__(self, state_dir: Path, config_hash: str) -> None:
        if not isinstance(config_hash, str) or not _CONFIG_HASH.fullmatch(config_hash):
            raise SecAggError("secure record: the config hash must be 64 hex digits")
        self.config_hash = config_hash
        self.path = state_dir / SECURE_RECORDS_DIR / f"{config_hash}.json"

    def had_session(self) -> bool:
        """Whether this site ever started a secure session in this approved run."""
        return self.path.exists()

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": _RECORD_VERSION, "config_hash": self.config_hash, "rounds": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SecAggError(f"secure record {self.path.name} is unreadable ({err})") from None
        rounds = data.get("rounds") if isinstance(data, dict) else None
        if (
            not isinstance(rounds, dict)
            or data.get("config_hash") != self.config_hash
            or data.get("version") != _RECORD_VERSION
        ):
            raise SecAggError(f"secure record {self.path.name}: malformed or of another run")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(self.path, data)

    def note_session(self, session: int) -> None:
        """Record that a secure session started (before its keys leave the site)."""
        with exclusive_lock(self.path):
            data = self._read()
            data["sessions"] = int(data.get("sessions", 0)) + 1
            data["last_session"] = session
            self._write(data)

    def round_refusal(
        self, round_number: int, session: int, participants: Sequence[int]
    ) -> str | None:
        """Why this site sits out masking `round_number` in `session` with
        `participants`, or None: an update masked for this round before may go only
        into the same session's sum over the same participants (F1)."""
        kept = self._read()["rounds"].get(str(round_number))
        if kept is None:
            return None
        if kept == {"session": session, "participants": sorted(participants)}:
            return None
        return (
            f"round {round_number} of this approved run already went into a secure sum "
            f"(session {kept.get('session')}, {len(kept.get('participants', []))} sites); "
            "this site sits the round out: an update enters at most one sum"
        )

    def note_round(self, round_number: int, session: int, participants: Sequence[int]) -> None:
        """Record, before the masked update leaves the site, which session and
        participants round `round_number` was masked for; raises `SecAggError` when
        another one already holds it (a second process raced this one)."""
        with exclusive_lock(self.path):
            refusal = self.round_refusal(round_number, session, participants)
            if refusal is not None:
                raise SecAggError(refusal)
            data = self._read()
            data["rounds"][str(round_number)] = {
                "session": session,
                "participants": sorted(participants),
            }
            self._write(data)
