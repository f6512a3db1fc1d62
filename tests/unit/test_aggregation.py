"""FedAvg over flat vectors and the checks applied before it."""

from __future__ import annotations

import numpy as np
import pytest

from consortia.server.aggregation.fedavg import UpdateShapeError, check_update, weighted_average


def test_weighted_average_matches_hand_computation() -> None:
    a = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    b = np.array([3.0, 5.0, -1.0], dtype=np.float32)
    result = weighted_average([(a, 10), (b, 30)])
    np.testing.assert_allclose(result, 0.25 * a + 0.75 * b, rtol=1e-7)
    assert result.dtype == np.float32


def test_weighted_average_of_one_is_identity_and_empty_is_error() -> None:
    a = np.random.default_rng(0).normal(size=100).astype(np.float32)
    np.testing.assert_array_equal(weighted_average([(a, 7)]), a)
    with pytest.raises(ValueError, match="no updates"):
        weighted_average([])
    with pytest.raises(ValueError, match="sum to zero"):
        weighted_average([(a, 0)])


def test_check_update_rejects_wrong_shape_dtype_and_nonfinite() -> None:
    reference = np.zeros(5, dtype=np.float32)
    check_update(reference, np.ones(5, dtype=np.float32))
    with pytest.raises(UpdateShapeError, match="shape"):
        check_update(reference, np.ones(6, dtype=np.float32))
    with pytest.raises(UpdateShapeError, match="dtype"):
        check_update(reference, np.ones(5, dtype=np.float64))
    with pytest.raises(UpdateShapeError, match="NaN or infinite"):
        check_update(reference, np.array([0, 0, np.inf, 0, 0], dtype=np.float32))
