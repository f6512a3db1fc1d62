"""Flat weight vectors: exact round trip, and every mismatch is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from consortia.common.networks.models import ModelSettings, build_model
from consortia.common.networks.weights import WeightLayout, WeightLayoutError

SETTINGS = ModelSettings(architecture="unet", channels=(8, 16), strides=(2,), norm_groups=4)


def test_round_trip_is_exact() -> None:
    model = build_model(SETTINGS)
    layout = WeightLayout.of(model.state_dict())
    vector = layout.flatten(model.state_dict())
    assert vector.dtype == np.float32 and vector.size == layout.size
    restored = layout.unflatten(vector)
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored[name], tensor)


def test_same_settings_give_same_layout_on_both_sides() -> None:
    a = WeightLayout.of(build_model(SETTINGS).state_dict())
    b = WeightLayout.of(build_model(SETTINGS).state_dict())
    other = WeightLayout.of(
        build_model(
            ModelSettings(architecture="unet", channels=(8, 32), strides=(2,), norm_groups=4)
        ).state_dict()
    )
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != other.fingerprint()


def test_mismatches_are_refused() -> None:
    layout = WeightLayout.of(build_model(SETTINGS).state_dict())
    with pytest.raises(WeightLayoutError, match="values, layout needs"):
        layout.unflatten(np.zeros(layout.size + 1, dtype=np.float32))
    with pytest.raises(WeightLayoutError, match="1-D"):
        layout.unflatten(np.zeros((1, layout.size), dtype=np.float32))
    bad = np.zeros(layout.size, dtype=np.float32)
    bad[3] = np.nan
    with pytest.raises(WeightLayoutError, match="NaN"):
        layout.unflatten(bad)
    state = build_model(SETTINGS).state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(WeightLayoutError, match="keys differ"):
        layout.flatten(state)
