"""Instructions survive the wire; malformed ones are refused with the key named."""

from __future__ import annotations

import math

import pytest
from flwr.app import ConfigRecord

from consortia.common.config.settings import Task
from consortia.common.networks.models import ModelSettings
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.record_fields import RecordFieldError


def _instruction() -> Instruction:
    return Instruction(
        round=3,
        run_name="study",
        task=Task.SEGMENTATION,
        model=ModelSettings(architecture="unet", channels=(8, 16), strides=(2,), norm_groups=4),
        layout_fingerprint="abc",
        batch_size=8,
        surface_metrics=False,
        local_epochs=2,
        learning_rate=0.01,
        seed=5,
        evaluate_first=True,
        proximal_mu=0.25,
    )


def test_round_trip() -> None:
    original = _instruction()
    config = original.to_config()
    assert config[rk.CFG_PROXIMAL_MU] == 0.25
    assert Instruction.from_config(config) == original


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        (rk.CFG_ROUND, "3", "'round' must be an integer"),
        (rk.CFG_TASK, "regression", "'task'"),
        (rk.CFG_MODEL_SETTINGS, '{"architecture": "vgg"}', "'model-settings'"),
        (rk.CFG_EVALUATE_FIRST, 1, "'evaluate-first' must be true or false"),
        (rk.CFG_PROXIMAL_MU, "0.1", "'proximal-mu' must be a number"),
        (rk.CFG_PROXIMAL_MU, -0.01, "'proximal-mu' must be a finite number >= 0"),
        (rk.CFG_PROXIMAL_MU, math.nan, "'proximal-mu' must be a finite number >= 0"),
        (rk.CFG_PROXIMAL_MU, math.inf, "'proximal-mu' must be a finite number >= 0"),
    ],
)
def test_malformed_field_is_named(key: str, value: str | float, match: str) -> None:
    config = dict(_instruction().to_config())
    config[key] = value
    with pytest.raises(RecordFieldError, match=match):
        Instruction.from_config(ConfigRecord(config))


def test_missing_field_is_named() -> None:
    config = dict(_instruction().to_config())
    del config[rk.CFG_BATCH_SIZE]
    with pytest.raises(RecordFieldError, match="no 'batch-size'"):
        Instruction.from_config(ConfigRecord(config))
