"""`accept_update` on real Flower replies: what one site's train reply must hold before
the server may aggregate it (keys, shape, dtype, finite values, example count)."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from consortia.common.config.settings import Role, RunSettings
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import RecordFieldError
from consortia.server.aggregation.fedavg import UpdateShapeError
from consortia.server.exchange.sites import Site
from consortia.server.exchange.updates import accept_update
from consortia.server.run.privacy import RunPrivacy

# Real request and reply messages, as in a ServerApp process.
pytestmark = pytest.mark.usefixtures("server_task_identity")

SITE = Site(
    node_id=7,
    name="hospital-a",
    role=Role.TRAIN,
    num_train=40,
    num_eval=10,
    data_fingerprint="f" * 64,
)
GLOBAL = np.linspace(-1.0, 1.0, 12, dtype=np.float32)


def train_reply(
    weights: np.ndarray | None = None,
    *,
    metrics: dict[str, Any] | None = None,
    arrays: dict[str, Array] | None = None,
    extra: dict[str, Any] | None = None,
) -> Message:
    """A site's reply to a train message, as the ClientApp builds it."""
    request = Message(
        RecordDict({rk.CONFIG_KEY: ConfigRecord({rk.CFG_ROUND: 1})}),
        dst_node_id=SITE.node_id,
        message_type="train",
        group_id="1",
    )
    update = GLOBAL + 0.01 if weights is None else weights
    content = RecordDict(
        {
            rk.ARRAYS_KEY: ArrayRecord(
                arrays if arrays is not None else {rk.WEIGHTS_ARRAY: Array(update)}
            ),
            rk.TRAIN_METRICS_KEY: MetricRecord(
                metrics
                if metrics is not None
                else {rk.M_NUM_EXAMPLES: 32, rk.M_TRAIN_LOSS: 0.5, rk.M_COMPUTE_S: 1.25}
            ),
        }
    )
    for key, record in (extra or {}).items():
        content[key] = record
    return Message(content, reply_to=request)


def accept(reply: Message, *, dp: bool = False) -> Any:
    return accept_update(SITE, reply, GLOBAL, RunPrivacy(RunSettings()), dp=dp)


def test_a_clean_update_is_accepted_with_its_info() -> None:
    accepted = accept(train_reply())
    np.testing.assert_array_equal(accepted.weights, GLOBAL + 0.01)
    assert accepted.examples == 32
    assert accepted.info == {"examples": 32.0, "loss": 0.5, "compute_s": 1.25}
    assert accepted.privacy is None and accepted.shares is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    weights = GLOBAL.copy()
    weights[5] = bad
    with pytest.raises(UpdateShapeError, match="NaN or infinite"):
        accept(train_reply(weights))


def test_wrong_shape_and_dtype_are_rejected() -> None:
    with pytest.raises(UpdateShapeError, match=r"shape \(13,\)"):
        accept(train_reply(np.zeros(13, dtype=np.float32)))
    with pytest.raises(UpdateShapeError, match=r"shape \(3, 4\)"):
        accept(train_reply(GLOBAL.reshape(3, 4)))
    with pytest.raises(UpdateShapeError, match="dtype float64"):
        accept(train_reply(GLOBAL.astype(np.float64)))
    with pytest.raises(UpdateShapeError, match="dtype >f4"):
        accept(train_reply(GLOBAL.astype(">f4")))


def test_an_extra_array_is_rejected_and_named() -> None:
    arrays = {rk.WEIGHTS_ARRAY: Array(GLOBAL), "smuggled": Array(np.ones(3, np.float32))}
    with pytest.raises(RecordFieldError, match="'smuggled'"):
        accept(train_reply(arrays=arrays))


def test_a_renamed_or_missing_weights_array_is_rejected_and_named() -> None:
    with pytest.raises(RecordFieldError, match=r"holds \['model'\].*only 'weights'"):
        accept(train_reply(arrays={"model": Array(GLOBAL)}))
    with pytest.raises(RecordFieldError, match=r"holds \[\]"):
        accept(train_reply(arrays={}))


def test_a_second_array_record_is_rejected_and_named() -> None:
    extra = {"activations": ArrayRecord({"x": Array(np.ones(4, np.float32))})}
    with pytest.raises(RecordFieldError, match="'activations'"):
        accept(train_reply(extra=extra))


def test_missing_records_and_metrics_are_named() -> None:
    reply = train_reply()
    del reply.content[rk.TRAIN_METRICS_KEY]
    with pytest.raises(RecordFieldError, match=f"'{rk.TRAIN_METRICS_KEY}'"):
        accept(reply)
    reply = train_reply()
    del reply.content[rk.ARRAYS_KEY]
    with pytest.raises(RecordFieldError, match=f"'{rk.ARRAYS_KEY}'"):
        accept(reply)
    no_loss = {rk.M_NUM_EXAMPLES: 32, rk.M_COMPUTE_S: 1.0}
    with pytest.raises(RecordFieldError, match=f"'{rk.M_TRAIN_LOSS}'"):
        accept(train_reply(metrics=no_loss))
    no_count = {rk.M_TRAIN_LOSS: 0.5, rk.M_COMPUTE_S: 1.0}
    with pytest.raises(RecordFieldError, match=f"'{rk.M_NUM_EXAMPLES}'"):
        accept(train_reply(metrics=no_count))


def test_metrics_of_the_wrong_record_type_are_named() -> None:
    reply = train_reply()
    reply.content[rk.TRAIN_METRICS_KEY] = ConfigRecord({rk.M_NUM_EXAMPLES: 32})
    with pytest.raises(RecordFieldError, match="not a MetricRecord"):
        accept(reply)


def test_bytes_that_are_no_numpy_array_are_rejected() -> None:
    buffer = BytesIO()
    np.save(buffer, GLOBAL)
    cut = Array(dtype="float32", shape=(12,), stype="numpy.ndarray", data=buffer.getvalue()[:-8])
    with pytest.raises(UpdateShapeError, match="cannot be read"):
        accept(train_reply(arrays={rk.WEIGHTS_ARRAY: cut}))
    torch_bytes = Array(dtype="float32", shape=(12,), stype="torch", data=b"\x00" * 48)
    with pytest.raises(UpdateShapeError, match="cannot be read"):
        accept(train_reply(arrays={rk.WEIGHTS_ARRAY: torch_bytes}))


def _metrics(count: float, loss: float = 0.5) -> dict[str, Any]:
    return {rk.M_NUM_EXAMPLES: count, rk.M_TRAIN_LOSS: loss, rk.M_COMPUTE_S: 1.0}


def test_example_count_above_the_registered_size_is_rejected() -> None:
    assert accept(train_reply(metrics=_metrics(40))).examples == 40
    with pytest.raises(UpdateShapeError, match="claims 41 examples, more than the 40"):
        accept(train_reply(metrics=_metrics(41)))


@pytest.mark.parametrize("count", [0, -5])
def test_zero_or_negative_example_count_is_rejected(count: int) -> None:
    with pytest.raises(UpdateShapeError, match=f"claims {count} examples.*at least 1"):
        accept(train_reply(metrics=_metrics(count)))


@pytest.mark.parametrize("count", [12.5, float("nan"), float("inf")])
def test_a_fractional_or_non_finite_count_is_rejected(count: float) -> None:
    with pytest.raises(UpdateShapeError, match="whole number"):
        accept(train_reply(metrics=_metrics(count)))


def test_a_count_of_the_wrong_type_is_named() -> None:
    metrics = {rk.M_NUM_EXAMPLES: [1.0, 2.0], rk.M_TRAIN_LOSS: 0.5, rk.M_COMPUTE_S: 1.0}
    with pytest.raises(RecordFieldError, match=f"'{rk.M_NUM_EXAMPLES}' must be a number"):
        accept(train_reply(metrics=metrics))


def test_a_non_finite_train_loss_is_rejected() -> None:
    with pytest.raises(UpdateShapeError, match="loss = nan"):
        accept(train_reply(metrics=_metrics(32, loss=float("nan"))))


def test_a_dp_run_rejects_an_update_without_privacy_record() -> None:
    with pytest.raises(UpdateShapeError, match="no privacy record"):
        accept(train_reply(), dp=True)


def test_the_ledger_head_a_reply_carries_is_checked_and_kept() -> None:
    head = ConfigRecord({rk.LEDGER_HEAD_HASH: "ab" * 32, rk.LEDGER_HEAD_ENTRIES: 3})
    accepted = accept(train_reply(extra={rk.LEDGER_HEAD_KEY: head}))
    assert accepted.ledger_head == {"sha256": "ab" * 32, "entries": 3}
    assert accept(train_reply()).ledger_head is None  # without DP it may be absent
    bad = ConfigRecord({rk.LEDGER_HEAD_HASH: "not a hash", rk.LEDGER_HEAD_ENTRIES: 3})
    with pytest.raises(RecordFieldError, match="'sha256' must be a hex SHA-256"):
        accept(train_reply(extra={rk.LEDGER_HEAD_KEY: bad}))
