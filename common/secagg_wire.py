"""Secure-aggregation messages as Flower ConfigRecord values, and back, validated.

A ConfigRecord holds only scalars and flat lists, so a map from node id to bytes travels
as two parallel lists. Every `decode_*` checks types, lengths and duplicates and raises
`SecAggError` naming `source` (e.g. "node 17") and the field. Give each message its own
ConfigRecord: the encodings of different messages reuse field names. Masked vectors
travel as a uint32 `Array` in an ArrayRecord (4 bytes per value, as many as the float32
update).

Messages of a session: the config (`SecAggConfig.to_config`) out and the public keys back
(`encode_public_keys`); the neighbours' keys (`encode_public_keys`) and the round
(`encode_round`) out with `train`, the encrypted shares (`encode_ciphertexts`) back with
the masked vector; the unmask request (`encode_unmask_request`) out and the shares
(`encode_unmask_shares`) back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from consortia.common.secagg_config import ConfigValue, SecAggError

__all__ = [
    "decode_ciphertexts",
    "decode_public_keys",
    "decode_round",
    "decode_unmask_request",
    "decode_unmask_shares",
    "encode_ciphertexts",
    "encode_public_keys",
    "encode_round",
    "encode_unmask_request",
    "encode_unmask_shares",
]

_KINDS = ("b", "pair")


def _int(record: Mapping[str, Any], key: str, source: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SecAggError(f"secagg message from {source}: '{key}' must be an integer >= 0")
    return value


def _ints(record: Mapping[str, Any], key: str, source: str) -> list[int]:
    values = record.get(key)
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise SecAggError(f"secagg message from {source}: '{key}' must be a list of node ids")
    if len(set(values)) != len(values):
        raise SecAggError(f"secagg message from {source}: '{key}' repeats a node id")
    return list(values)


def _bytes_list(record: Mapping[str, Any], key: str, source: str, length: int) -> list[bytes]:
    values = record.get(key)
    if not isinstance(values, list) or not all(isinstance(v, bytes) for v in values):
        raise SecAggError(f"secagg message from {source}: '{key}' must be a list of bytes")
    if len(values) != length:
        raise SecAggError(f"secagg message from {source}: '{key}' has the wrong length")
    return list(values)


def encode_public_keys(keys: Mapping[int, Mapping[str, bytes]]) -> dict[str, ConfigValue]:
    """Public keys by node (`{"c": ..., "s": ...}` each) as three lists."""
    ids = sorted(keys)
    return {
        "pk_ids": ids,
        "pk_c": [keys[i]["c"] for i in ids],
        "pk_s": [keys[i]["s"] for i in ids],
    }


def decode_public_keys(record: Mapping[str, Any], source: str) -> dict[int, dict[str, bytes]]:
    """The inverse of `encode_public_keys`."""
    ids = _ints(record, "pk_ids", source)
    c = _bytes_list(record, "pk_c", source, len(ids))
    s = _bytes_list(record, "pk_s", source, len(ids))
    return {i: {"c": ci, "s": si} for i, ci, si in zip(ids, c, s, strict=True)}


def encode_ciphertexts(by_node: Mapping[int, bytes]) -> dict[str, ConfigValue]:
    """Ciphertexts by node (destination or sender) as two lists."""
    ids = sorted(by_node)
    return {"ct_ids": ids, "ct": [by_node[i] for i in ids]}


def decode_ciphertexts(record: Mapping[str, Any], source: str) -> dict[int, bytes]:
    """The inverse of `encode_ciphertexts`."""
    ids = _ints(record, "ct_ids", source)
    return dict(zip(ids, _bytes_list(record, "ct", source, len(ids)), strict=True))


def encode_round(round_number: int, participants: Sequence[int]) -> dict[str, ConfigValue]:
    """A round's number and participants, sent with `train`."""
    return {"round": round_number, "participants": sorted(participants)}


def decode_round(record: Mapping[str, Any], source: str) -> tuple[int, list[int]]:
    """The inverse of `encode_round`."""
    return _int(record, "round", source), _ints(record, "participants", source)


def encode_unmask_request(
    round_number: int,
    active: Sequence[int],
    dropped: Sequence[int],
    ciphertexts: Mapping[int, bytes],
) -> dict[str, ConfigValue]:
    """What an active site gets for unmasking (`SecAggServer.unmask_request`)."""
    return {
        "round": round_number,
        "active": sorted(active),
        "dropped": sorted(dropped),
        **encode_ciphertexts(ciphertexts),
    }


def decode_unmask_request(
    record: Mapping[str, Any], source: str
) -> tuple[int, list[int], list[int], dict[int, bytes]]:
    """The inverse of `encode_unmask_request`: (round, active, dropped, ciphertexts)."""
    return (
        _int(record, "round", source),
        _ints(record, "active", source),
        _ints(record, "dropped", source),
        decode_ciphertexts(record, source),
    )


def encode_unmask_shares(shares: Mapping[str, Mapping[int, bytes]]) -> dict[str, ConfigValue]:
    """A site's unmask answer (`{"b": {node: share}, "pair": {node: shares}}`) as lists."""
    out: dict[str, ConfigValue] = {}
    for kind in _KINDS:
        part = shares.get(kind, {})
        ids = sorted(part)
        out[f"{kind}_ids"] = ids
        out[f"{kind}_shares"] = [part[i] for i in ids]
    return out


def decode_unmask_shares(record: Mapping[str, Any], source: str) -> dict[str, dict[int, bytes]]:
    """The inverse of `encode_unmask_shares`."""
    out: dict[str, dict[int, bytes]] = {}
    for kind in _KINDS:
        ids = _ints(record, f"{kind}_ids", source)
        values = _bytes_list(record, f"{kind}_shares", source, len(ids))
        out[kind] = dict(zip(ids, values, strict=True))
    return out
