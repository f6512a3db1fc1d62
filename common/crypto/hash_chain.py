"""Hash chains over JSON records: each record carries the SHA-256 of its predecessor's
hash and of its own canonical JSON, so that editing, dropping or reordering any record
breaks every hash after it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["GENESIS", "HASH_FIELD", "PREV_FIELD", "chain_hash", "genesis_for", "verify_chain"]

HASH_FIELD = "hash"
PREV_FIELD = "prev_hash"
GENESIS = "0" * 64


def _canonical(record: Mapping[str, Any]) -> bytes:
    body = {key: value for key, value in record.items() if key != HASH_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def genesis_for(label: str) -> str:
    """A chain's first `prev_hash`, bound to what the chain is about (e.g. a data set's
    fingerprint): a chain copied under another label no longer verifies."""
    return hashlib.sha256(f"consortia.hash-chain:{label}".encode()).hexdigest()


def chain_hash(record: Mapping[str, Any]) -> str:
    """The hash a record must carry: SHA-256 over its canonical JSON (including its
    `prev_hash`, excluding its own `hash`)."""
    return hashlib.sha256(_canonical(record)).hexdigest()


def verify_chain(records: Iterable[Mapping[str, Any]], genesis: str = GENESIS) -> list[str]:
    """Problems found in a chain (empty when intact), each naming the record index."""
    problems: list[str] = []
    previous = genesis
    for index, record in enumerate(records):
        if record.get(PREV_FIELD) != previous:
            after = f"entry {index - 1}" if index else "the chain's start (other data set?)"
            problems.append(f"entry {index}: prev_hash does not match {after}")
        if record.get(HASH_FIELD) != chain_hash(record):
            problems.append(f"entry {index}: content does not match its hash (altered)")
        previous = str(record.get(HASH_FIELD))
    return problems
