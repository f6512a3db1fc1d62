"""A training site's reply, checked before it may touch the global model.

Every check that needs only the one reply is here: the reply's keys (one array record
holding exactly the weights array, the train metrics), the weights' shape, dtype and
values (or, under secure aggregation, the masked vector's shape), the example count
against what the site registered, the privacy ledger's head (required under DP) and
under DP the privacy record. Checks across the
round's updates (norms) are `consortia.server.aggregation.update_validation`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from consortia.common.privacy.ledger import LedgerError, LedgerHead
from consortia.common.secure_aggregation.config import SecAggError
from consortia.common.secure_aggregation.wire import decode_ciphertexts
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import (
    RecordFieldError,
    get_array_record,
    get_config_record,
    get_float,
    get_metric_record,
)
from consortia.server.aggregation.fedavg import UpdateShapeError, check_update
from consortia.server.exchange.sites import Site
from consortia.server.run.privacy import RunPrivacy, read_privacy_report, spend_record

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
    # The head of the site's privacy ledger as the reply carried it ({"sha256", "entries"}).
    ledger_head: dict[str, Any] | None = None


def _weights(content: RecordDict) -> np.ndarray:
    """The one weights array of a train reply; any other array (another name in the
    array record, another array record) is refused: a site sends nothing else."""
    record = get_array_record(content, rk.ARRAYS_KEY)
    names = sorted(record)
    if names != [rk.WEIGHTS_ARRAY]:
        raise RecordFieldError(
            f"array record '{rk.ARRAYS_KEY}' holds {names}; a training update holds only "
            f"'{rk.WEIGHTS_ARRAY}'"
        )
    others = sorted(
        k for k, v in content.items() if isinstance(v, ArrayRecord) and k != rk.ARRAYS_KEY
    )
    if others:
        raise RecordFieldError(
            f"reply carries array record(s) {others}; a training update carries arrays "
            f"only in '{rk.ARRAYS_KEY}'"
        )
    try:
        return record[rk.WEIGHTS_ARRAY].numpy()
    except (TypeError, ValueError, EOFError, OSError) as err:  # not NumPy, corrupt bytes
        raise UpdateShapeError(
            f"'{rk.WEIGHTS_ARRAY}' cannot be read as a NumPy array: {err}"
        ) from None


def _check_count(count: float, site: Site) -> None:
    if not math.isfinite(count) or count != int(count):
        raise UpdateShapeError(f"claims {count} examples; a count is a whole number")
    if count < 1:
        raise UpdateShapeError(f"claims {count:.0f} examples; a training update needs at least 1")
    if count > site.num_train:
        raise UpdateShapeError(
            f"claims {count:.0f} examples, more than the {site.num_train} the site registered"
        )


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise UpdateShapeError(f"reports {key} = {value}; a train metric must be finite")
    return metrics


def _ledger_head(content: RecordDict, *, dp: bool) -> dict[str, Any] | None:
    """The privacy ledger's head a train reply carries; required under DP (the site's
    ledger is what the privacy audit checks it against)."""
    if rk.LEDGER_HEAD_KEY not in content:
        if dp:
            raise RecordFieldError(
                f"no '{rk.LEDGER_HEAD_KEY}' record: a DP update carries its ledger's head"
            )
        return None
    record = get_config_record(content, rk.LEDGER_HEAD_KEY)
    data = {
        "sha256": record.get(rk.LEDGER_HEAD_HASH),
        "entries": record.get(rk.LEDGER_HEAD_ENTRIES),
    }
    try:
        return LedgerHead.from_dict(data, f"'{rk.LEDGER_HEAD_KEY}'").to_dict()
    except LedgerError as err:
        raise RecordFieldError(str(err)) from None


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
    """Check the reply's keys (exactly one array, `weights`, in the `arrays` record; the
    train metrics), size, dtype and values of the update (or, under secure aggregation,
    the shape of the masked vector of `masked_size` values), the example count (a whole
    number from 1 to what the site registered), finite train metrics and, under DP, the
    privacy record against the run's settings. Raises `RecordFieldError` or
    `UpdateShapeError` naming the key or the problem."""
    metrics = get_metric_record(reply.content, rk.TRAIN_METRICS_KEY)
    count = get_float(metrics, rk.M_NUM_EXAMPLES)
    update = _weights(reply.content)
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
    _check_count(count, site)
    values = {"examples": count, "compute_s": get_float(metrics, rk.M_COMPUTE_S)}
    if not dp:
        # Under DP a site sends no training loss: the raw loss is no DP release, and a
        # loss a site sends anyway is not recorded or published (docs/privacy.md).
        values["loss"] = get_float(metrics, rk.M_TRAIN_LOSS)
    info = _finite(values)
    record: dict[str, Any] | None = None
    if dp:
        if rk.PRIVACY_KEY not in reply.content:
            raise UpdateShapeError("no privacy record: the site did not train with DP-SGD")
        report = read_privacy_report(reply)
        privacy.check(report)
        privacy.record(site.name, report)
        record = spend_record(report, int(count))
    head = _ledger_head(reply.content, dp=dp)
    return AcceptedUpdate(update, count, info, record, shares, head)
