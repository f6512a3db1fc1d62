"""The run-long learning-rate schedule and the local optimiser a site builds from the
approved training settings: rates continue across rounds, the approved settings decide
them, and bad settings are errors naming the field."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from consortia.client.data.site_data import SiteArrays
from consortia.client.training.trainer import RoundRecipe, train_local
from consortia.common.config.lr_schedule import POLY_EXPONENT, Schedule
from consortia.common.config.settings import (
    RunSettings,
    Task,
    TrainingSettings,
    run_settings_from_json,
)
from consortia.common.errors import ConfigError
from consortia.common.networks.models import ModelSettings, build_model


def test_poly_schedule_runs_over_the_whole_run_not_each_round() -> None:
    schedule = Schedule(0.01, "poly", total_rounds=4)
    assert schedule.rate(1, 0, 10) == pytest.approx(0.01)
    # round 3 starts where round 2 ended: half-way through the run
    assert schedule.rate(3, 0, 10) == pytest.approx(0.01 * 0.5**POLY_EXPONENT)
    assert schedule.rate(2, 10, 10) == pytest.approx(schedule.rate(3, 0, 10))
    rates = [schedule.rate(r, s, 10) for r in range(1, 5) for s in range(10)]
    assert all(a > b for a, b in itertools.pairwise(rates))  # strictly decreasing
    assert rates[-1] > 0


def test_constant_cosine_and_warmup() -> None:
    assert Schedule(0.1).rate(7, 3, 5) == 0.1
    cosine = Schedule(0.1, "cosine", total_rounds=2)
    assert cosine.rate(2, 0, 4) == pytest.approx(0.05)
    warm = Schedule(0.1, "constant", total_rounds=10, warmup_rounds=2)
    assert warm.rate(1, 0, 4) == pytest.approx(0.1 / 4)  # never 0
    assert warm.rate(2, 0, 4) == pytest.approx(0.05)
    assert warm.rate(3, 0, 4) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base": 0.0}, "learning rate"),
        ({"base": math.nan}, "learning rate"),
        ({"base": 0.1, "total_rounds": 0}, "total_rounds"),
        ({"base": 0.1, "total_rounds": 2, "warmup_rounds": 3}, "warmup_rounds"),
    ],
)
def test_bad_schedules_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)  # type: ignore[arg-type]


def test_training_settings_errors_name_the_field() -> None:
    base = RunSettings().model_dump()
    bad = {**base, "training": {"optimizer": "rmsprop"}}
    with pytest.raises(ConfigError, match=r"training\.optimizer"):
        run_settings_from_json(_json(bad))
    with pytest.raises(ConfigError, match="warmup_rounds"):
        run_settings_from_json(_json({**base, "rounds": 2, "training": {"warmup_rounds": 3}}))
    with pytest.raises(ConfigError, match="nesterov"):
        run_settings_from_json(
            _json({**base, "training": {"optimizer": "sgd", "momentum": 0.0, "nesterov": True}})
        )


def _json(data: dict[str, object]) -> str:
    return json.dumps(data, default=list)


def test_recipe_follows_the_approved_settings() -> None:
    training = TrainingSettings(
        optimizer="sgd", learning_rate=0.02, schedule="poly", momentum=0.99, weight_decay=3e-5
    )
    plan = RoundRecipe.for_round(training, 3, 4)
    model = torch.nn.Linear(2, 2)
    optimizer = plan.build(model)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.99 and group["nesterov"] and group["weight_decay"] == 3e-5
    assert group["lr"] == pytest.approx(0.02 * 0.5**POLY_EXPONENT)
    assert plan.set_rate(optimizer, 5, 10) == pytest.approx(0.02 * (1 - 2.5 / 4) ** POLY_EXPONENT)
    adamw = RoundRecipe.for_round(TrainingSettings(optimizer="adamw"), 1, 1).build(model)
    assert isinstance(adamw, torch.optim.AdamW)


def test_sgd_with_a_poly_schedule_learns_a_segmentation() -> None:
    """A few SGD+Nesterov steps on a tiny 2D task leave the loss below where it started."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(16, 1, 16, 16)).astype(np.float32)
    targets = (images[:, 0] > 0.5).astype(np.int64)
    data = SiteArrays(images, targets)
    settings = ModelSettings("unet", 2, 1, 2, channels=(8, 16), strides=(2,), norm_groups=4)
    training = TrainingSettings(optimizer="sgd", learning_rate=0.05, schedule="poly")
    losses = []
    torch.manual_seed(0)
    model = build_model(settings)
    for round_number in (1, 2, 3):
        result = train_local(
            model,
            data,
            Task.SEGMENTATION,
            epochs=2,
            batch_size=8,
            learning_rate=training.learning_rate,
            seed=round_number,
            device=torch.device("cpu"),
            recipe=RoundRecipe.for_round(training, round_number, 3),
        )
        losses.append(result.mean_loss)
    assert losses[-1] < losses[0]
