"""A training site's reply, checked before it may touch the global model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message

from consortia.common import records as rk
from consortia.common.record_fields import (
    get_array,
    get_array_record,
    get_config_record,
    get_float,
    get_metric_record,
)
from consortia.common.secagg_config import SecAggError
from consortia.common.secagg_wire import decode_ciphertexts
from consortia.server.aggregation import UpdateShapeError, check_update
from consortia.server.run_privacy import RunPrivacy, read_privacy_report, spend_record
from consortia.server.sites import Site

__all__ = ["AcceptedUpdate", "accept_update"]


@dataclass(frozen=True)
class AcceptedUpdate:
    """A checked update: weights, example count, train info and privacy record."""

    weights: np.ndarray
    examples: float
    info: dict[str, float]
    privacy: dict[str, Any] | None
    # Under secure aggregation: the encrypted shares the site sent with its masked vector.
    shares: dict[int, bytes] | None = None


def _check_masked(update: np.ndarray, size: int) -> None:
    if update.ndim != 1 or update.shape != (size,) or update.dtype != np.uint32:
        raise UpdateShapeError(
            f"masked update has shape {update.shape} and dtype {update.dtype}; "
            f"secure aggregation expects ({size},) uint32"
        )


def accept_update(
    site: Site,
    reply: Message,
    weights: np.ndarray,
    privacy: RunPrivacy,
    *,
    dp: bool,
    masked_size: int | None = None,
) -> AcceptedUpdate:
    """Check size, dtype and values of the update (or, under secure aggregation, the
    shape of the masked vector of `masked_size` values), the example count against what
    the site registered and, under DP, its privacy record against the run's settings.
    Raises `RecordFieldError` or `UpdateShapeError` naming the problem."""
    metrics = get_metric_record(reply.content, rk.TRAIN_METRICS_KEY)
    count = get_float(metrics, rk.M_NUM_EXAMPLES)
    update = get_array(get_array_record(reply.content, rk.ARRAYS_KEY), rk.WEIGHTS_ARRAY)
    shares = None
    if masked_size is None:
        check_update(weights, update)
    else:
        _check_masked(update, masked_size)
        try:
            shares = decode_ciphertexts(
                get_config_record(reply.content, rk.SECAGG_KEY), f"site {site.name}"
            )
        except SecAggError as err:
            raise UpdateShapeError(str(err)) from None
    if not 0 < count <= site.num_train:
        raise UpdateShapeError(f"claims {count:.0f} examples; the site registered {site.num_train}")
    record: dict[str, Any] | None = None
    if dp:
        if rk.PRIVACY_KEY not in reply.content:
            raise UpdateShapeError("no privacy record: the site did not train with DP-SGD")
        report = read_privacy_report(reply)
        privacy.check(report)
        privacy.record(site.name, report)
        record = spend_record(report, int(count))
    info = {
        "examples": count,
        "loss": get_float(metrics, rk.M_TRAIN_LOSS),
        "compute_s": get_float(metrics, rk.M_COMPUTE_S),
    }
    return AcceptedUpdate(update, count, info, record, shares)
