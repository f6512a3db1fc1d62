"""A training site's reply, checked before it may touch the global model.

Every check that needs only the one reply is here: the reply's keys (one array record
holding exactly the weights array, the train metrics), the weights' shape, dtype and
values (or, under secure aggregation, the masked vector's shape), the example count
against what the site registered, the privacy ledger's head (required under DP) and
under DP the privacy record. Checks across the
round's updates (norms) are `consortia.server.aggregation.update_validation`'s;
`UpdateCollector` applies both to a round's replies and records who was left out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from consortia.common.audit.log import PRIVACY_SPENT, SITE_LEFT_OUT, UPDATE_REJECTED
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
from consortia.server.aggregation.update_validation import (
    UPDATE_NORM,
    UpdateValidator,
    update_norms,
)
from consortia.server.exchange.sites import Site
from consortia.server.run.folder import RunFolder
from consortia.server.run.privacy import RunPrivacy, read_privacy_report, spend_record

__all__ = ["NO_REPLY", "AcceptedUpdate", "UpdateCollector", "accept_update"]

logger = logging.getLogger("consortia.server")

NO_REPLY = "no reply before the round timeout"


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
    # A whole number (checked above): results.json records it as an integer.
    values = {"examples": int(count), "compute_s": get_float(metrics, rk.M_COMPUTE_S)}
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


class UpdateCollector:
    """A round's training replies checked one by one (`accept_update`) and, when plain,
    against each other (norms, `[validation]`); whoever is left out is recorded with why.
    A site whose privacy policy refused the round leaves training."""

    def __init__(
        self,
        folder: RunFolder,
        privacy: RunPrivacy,
        validator: UpdateValidator,
        *,
        dp: bool,
    ) -> None:
        self.folder = folder
        self.privacy = privacy
        self.validator = validator
        self.dp = dp

    def _exclude(self, round_number: int, site: Site, reason: str) -> None:
        self.privacy.exclude(site.name, reason)
        logger.warning(
            "round %d: %s leaves training (its privacy policy refused): %s",
            round_number,
            site.name,
            reason,
        )
        self.folder.event("site_excluded", round=round_number, site=site.name, reason=reason)

    def _accept(
        self,
        round_number: int,
        site: Site,
        reply: Message,
        weights: np.ndarray,
        masked_size: int | None,
    ) -> AcceptedUpdate | str:
        """The checked update of one reply, or why it is left out."""
        if reply.has_error():
            reason = reply.error.reason or f"error {reply.error.code}"
            if reply.error.code == rk.ERROR_PRIVACY_BUDGET:
                self._exclude(round_number, site, reason)
            return reason
        try:
            return accept_update(
                site, reply, weights, self.privacy, dp=self.dp, masked_size=masked_size
            )
        except (RecordFieldError, UpdateShapeError) as err:
            self.folder.event(UPDATE_REJECTED, round=round_number, site=site.name, reason=str(err))
            return f"update rejected: {err}"

    def collect(
        self,
        round_number: int,
        weights: np.ndarray,
        replies: Mapping[int, Message],
        trainers: Sequence[Site],
        masked_size: int | None,
        dropped: Mapping[int, str],
    ) -> tuple[dict[int, AcceptedUpdate], dict[str, str]]:
        """The trainers' checked updates by node, and why the others were left out
        (`dropped`: why the exchange dropped a node's reply, when it did)."""
        accepted: dict[int, AcceptedUpdate] = {}
        rejected: dict[str, str] = {}
        for site in trainers:
            reply = replies.get(site.node_id)
            if reply is None:
                rejected[site.name] = dropped.get(site.node_id, NO_REPLY)
                continue
            outcome = self._accept(round_number, site, reply, weights, masked_size)
            if isinstance(outcome, str):
                rejected[site.name] = outcome
            else:
                accepted[site.node_id] = outcome
        if masked_size is None and accepted:
            names = {site.node_id: site.name for site in trainers}
            self._check_norms(round_number, weights, accepted, names, rejected)
        for name, reason in rejected.items():
            logger.warning("round %d: %s left out: %s", round_number, name, reason)
            self.folder.event(SITE_LEFT_OUT, round=round_number, site=name, reason=reason)
        return accepted, rejected

    def _check_norms(
        self,
        round_number: int,
        weights: np.ndarray,
        accepted: dict[int, AcceptedUpdate],
        names: Mapping[int, str],
        rejected: dict[str, str],
    ) -> None:
        """Record each plain update's norm; drop those `[validation]` refuses."""
        norms = update_norms(weights, {names[n]: u.weights for n, u in accepted.items()})
        reasons = self.validator.rejections(norms)
        for node in list(accepted):
            update = accepted[node]
            name = names[node]
            update.info[UPDATE_NORM] = norms[name]
            if name not in reasons:
                continue
            del accepted[node]
            rejected[name] = f"update rejected: {reasons[name]}"
            self.folder.event(UPDATE_REJECTED, round=round_number, site=name, reason=reasons[name])
            if update.privacy is not None:  # the site spent its budget all the same
                self.folder.event(PRIVACY_SPENT, round=round_number, site=name, **update.privacy)
