"""The digest a site signs: every record of a reply except the signature itself."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import RecordDict

from consortia.common.crypto.signing import SignatureError, content_digest
from consortia.common.wire import records as rk

__all__ = ["record_digest"]


def _name(kind: str, *parts: str) -> str:
    # Length-prefixed parts: record "a/b" with key "c" never meets record "a", key "b/c";
    # the record's type is part of the name, so a metric and a config record differ.
    return kind + "".join(f"|{len(part)}:{part}" for part in parts)


def record_digest(content: RecordDict) -> str:
    """`content_digest` over the arrays and the metric/config records of `content`,
    leaving out the signature record. Raises `SignatureError` for content that cannot be
    read (e.g. an array whose bytes are not a NumPy array)."""
    arrays: dict[str, np.ndarray] = {}
    try:
        for name, record in content.array_records.items():
            for key, array in record.items():
                arrays[_name("array", name, key)] = array.numpy()
    except Exception as err:  # whatever a malformed array raises, it is not an update
        raise SignatureError(f"unreadable array in the reply: {err}") from None
    metrics: dict[str, dict[str, Any]] = {
        _name("metrics", name): dict(values.items())
        for name, values in content.metric_records.items()
    }
    for name, config in content.config_records.items():
        if name != rk.SIGNATURE_KEY:
            metrics[_name("config", name)] = dict(config.items())
    return content_digest(arrays, metrics)
