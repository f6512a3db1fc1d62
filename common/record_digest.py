"""The digest a site signs: every record of a reply except the signature itself."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import RecordDict

from consortia.common import records as rk
from consortia.common.signing import content_digest

__all__ = ["record_digest"]


def record_digest(content: RecordDict) -> str:
    """`content_digest` over the arrays and the metric/config records of `content`
    (arrays named `<record>/<key>`), leaving out the signature record."""
    arrays: dict[str, np.ndarray] = {}
    for name, record in content.array_records.items():
        for key, array in record.items():
            arrays[f"{name}/{key}"] = array.numpy()
    metrics: dict[str, dict[str, Any]] = {
        name: dict(values.items()) for name, values in content.metric_records.items()
    }
    for name, config in content.config_records.items():
        if name != rk.SIGNATURE_KEY:
            metrics[name] = dict(config.items())
    return content_digest(arrays, metrics)
