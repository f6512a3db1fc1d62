"""Secure-aggregation messages as Flower ConfigRecord values, and back, validated.

A ConfigRecord holds only scalars and flat lists, so a map from node id to bytes travels
as two parallel lists. Every `decode_*` checks types, lengths and duplicates and raises
`SecAggError` naming `source` (e.g. "node 17") and the field. Give each message its own
ConfigRecord: the encodings of different messages reuse field names. Masked vectors
travel as a uint32 `Array` in an ArrayRecord (4 bytes per value, as many as the float32
update).

Messages of a session: the config (`SecAggConfig.to_config`) out and the public keys back
(`encode_public_keys`, with the site's signature over them, `KeyAdvert`, in the same
record: signing adds no message); the neighbours' keys and signatures
(`encode_public_keys`, `decode_adverts`) and the round
(`encode_round`) out with `train`, the encrypted shares (`encode_ciphertexts`) back with
the masked vector; the unmask request (`encode_unmask_request`) out and the shares
(`encode_unmask_shares`) back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from consortia.common.secure_aggregation.config import ConfigValue, SecAggError
from consortia.common.secure_aggregation.roster import KeyAdvert

__all__ = [
    "decode_adverts",
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


def encode_public_keys(
    keys: Mapping[int, Mapping[str, bytes]], adverts: Mapping[int, KeyAdvert] | None = None
) -> dict[str, ConfigValue]:
    """Public keys by node (`{"c": ..., "s": ...}` each) as three lists, and the sites'
    signatures over them (`adverts`, by node; those of nodes without keys left out) as
    four more."""
    ids = sorted(keys)
    out: dict[str, ConfigValue] = {
        "pk_ids": ids,
        "pk_c": [keys[i]["c"] for i in ids],
        "pk_s": [keys[i]["s"] for i in ids],
    }
    signed = sorted(node for node in adverts or {} if node in keys)
    if adverts and signed:
        out["adv_ids"] = signed
        out["adv_site"] = [adverts[i].site for i in signed]
        out["adv_key"] = [adverts[i].site_key for i in signed]
        out["adv_sig"] = [adverts[i].signature for i in signed]
    return out


def decode_adverts(record: Mapping[str, Any], source: str) -> dict[int, KeyAdvert]:
    """The signatures `encode_public_keys` added, by node (empty when there are none);
    only for nodes whose keys the record holds."""
    if "adv_ids" not in record:
        return {}
    ids = _ints(record, "adv_ids", source)
    if not set(ids) <= set(_ints(record, "pk_ids", source)):
        raise SecAggError(f"secagg message from {source}: 'adv_ids' names a node without keys")
    sites = record.get("adv_site")
    if not isinstance(sites, list) or not all(isinstance(v, str) for v in sites):
        raise SecAggError(f"secagg message from {source}: 'adv_site' must be a list of names")
    if len(sites) != len(ids):
        raise SecAggError(f"secagg message from {source}: 'adv_site' has the wrong length")
    keys = _bytes_list(record, "adv_key", source, len(ids))
    signatures = _bytes_list(record, "adv_sig", source, len(ids))
    adverts: dict[int, KeyAdvert] = {}
    for node, site, key, signature in zip(ids, sites, keys, signatures, strict=True):
        advert = KeyAdvert(site=site, site_key=key, signature=signature)
        advert.check_shape(f"node {node} (from {source})")
        adverts[node] = advert
    return adverts


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
