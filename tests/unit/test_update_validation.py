"""Norm checks across one round's plain updates (`[validation]`): a bound on each norm
and outliers against the median of the other sites' norms."""

from __future__ import annotations

import numpy as np
import pytest

from consortia.common.config.settings import RunSettings
from consortia.common.config.strategy_settings import ValidationSettings
from consortia.server.aggregation.fedavg import UpdateShapeError
from consortia.server.aggregation.update_validation import (
    MIN_UPDATES_FOR_OUTLIERS,
    UpdateValidator,
    update_norm,
    update_norms,
)
from consortia.server.exchange.updates import accept_update
from consortia.server.run.privacy import RunPrivacy
from tests.unit.test_updates import GLOBAL, SITE, train_reply

# Real request and reply messages, as in a ServerApp process.
pytestmark = pytest.mark.usefixtures("server_task_identity")

RNG = np.random.default_rng(5)
GLOBAL_BIG = RNG.normal(size=10_000).astype(np.float32)


def _site_update(scale: float, seed: int) -> np.ndarray:
    """The global model moved by a random step of norm `scale`."""
    step = np.random.default_rng(seed).normal(size=GLOBAL_BIG.size)
    return (GLOBAL_BIG + step / np.linalg.norm(step) * scale).astype(np.float32)


def _validator(max_update_norm: float = 0.0, outlier_factor: float = 10.0) -> UpdateValidator:
    return UpdateValidator(
        ValidationSettings(max_update_norm=max_update_norm, outlier_factor=outlier_factor)
    )


def test_update_norm_matches_numpy_in_float64() -> None:
    update = _site_update(3.0, 1)
    expected = np.linalg.norm(update.astype(np.float64) - GLOBAL_BIG.astype(np.float64))
    assert update_norm(GLOBAL_BIG, update) == pytest.approx(expected, rel=1e-12)
    assert update_norm(GLOBAL_BIG, update) == pytest.approx(3.0, rel=1e-5)
    assert update_norm(GLOBAL_BIG, GLOBAL_BIG) == 0.0


def test_update_norm_spans_chunks_and_does_not_overflow() -> None:
    size = (1 << 20) * 2 + 17  # three chunks, the last a short one
    base = np.random.default_rng(2).normal(size=size).astype(np.float32)
    moved = base + np.arange(size, dtype=np.float32) % 7
    expected = np.linalg.norm(moved.astype(np.float64) - base.astype(np.float64))
    assert update_norm(base, moved) == pytest.approx(expected, rel=1e-12)
    zeros = np.zeros(size, dtype=np.float32)
    huge = np.full(size, 3e38, dtype=np.float32)  # squares overflow float32, not float64
    assert update_norm(zeros, huge) == pytest.approx(float(huge[0]) * np.sqrt(size), rel=1e-9)


def test_update_norm_refuses_a_vector_of_another_shape() -> None:
    with pytest.raises(UpdateShapeError, match="shape"):
        update_norm(GLOBAL_BIG, GLOBAL_BIG[:-1])


def test_all_clean_updates_pass() -> None:
    candidates = {f"site-{i}": _site_update(1.0 + 0.2 * i, i) for i in range(5)}
    assert _validator(max_update_norm=10.0).check_norms(GLOBAL_BIG, candidates) == {}


def test_a_norm_above_the_bound_is_rejected_with_the_numbers() -> None:
    candidates = {"a": _site_update(1.0, 1), "b": _site_update(60.0, 2)}
    rejected = _validator(max_update_norm=50.0).check_norms(GLOBAL_BIG, candidates)
    assert rejected == {"b": "update norm 60 exceeds max_update_norm 50"}


def test_no_bound_when_max_update_norm_is_zero() -> None:
    candidates = {"a": _site_update(1.0, 1), "b": _site_update(1e6, 2)}
    assert _validator(max_update_norm=0.0).check_norms(GLOBAL_BIG, candidates) == {}


def test_a_scaled_update_is_an_outlier_and_the_others_pass() -> None:
    honest = {f"site-{i}": _site_update(1.0 + 0.1 * i, i) for i in range(4)}
    step = honest["site-0"] - GLOBAL_BIG
    candidates = honest | {"attacker": GLOBAL_BIG + step * 100}
    norms = update_norms(GLOBAL_BIG, candidates)
    rejected = _validator().check_norms(GLOBAL_BIG, candidates)
    assert list(rejected) == ["attacker"]
    median = float(np.median([norms[n] for n in honest]))
    assert rejected["attacker"] == (
        f"update norm {norms['attacker']:.4g} is {norms['attacker'] / median:.4g}x the median "
        f"of the other sites' norms ({median:.4g}); outlier_factor 10"
    )


def test_a_sign_flipped_update_passes_the_norm_checks() -> None:
    honest = {f"site-{i}": _site_update(1.0, i) for i in range(4)}
    flipped = GLOBAL_BIG - (honest["site-0"] - GLOBAL_BIG)
    candidates = honest | {"flipper": flipped}
    norms = update_norms(GLOBAL_BIG, candidates)
    assert norms["flipper"] == pytest.approx(norms["site-0"], rel=1e-6)
    assert _validator(max_update_norm=5.0).check_norms(GLOBAL_BIG, candidates) == {}


def test_outlier_check_needs_three_updates() -> None:
    assert MIN_UPDATES_FOR_OUTLIERS == 3
    two = {"a": _site_update(1.0, 1), "b": _site_update(1000.0, 2)}
    assert _validator().check_norms(GLOBAL_BIG, two) == {}
    three = two | {"c": _site_update(1.1, 3)}
    assert list(_validator().check_norms(GLOBAL_BIG, three)) == ["b"]


def test_outlier_factor_zero_turns_the_check_off() -> None:
    candidates = {"a": _site_update(1.0, 1), "b": _site_update(1.0, 2), "c": _site_update(1e4, 3)}
    assert _validator(outlier_factor=0.0).check_norms(GLOBAL_BIG, candidates) == {}
    assert list(_validator(outlier_factor=10.0).check_norms(GLOBAL_BIG, candidates)) == ["c"]


def test_the_factor_is_a_strict_threshold_on_the_others_median() -> None:
    norms = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 20.0}  # d against median(1, 2, 3) = 2
    assert _validator(outlier_factor=10.0).rejections(norms) == {}
    assert _validator(outlier_factor=9.99).rejections(norms) == {
        "d": "update norm 20 is 10x the median of the other sites' norms (2); outlier_factor 9.99"
    }


def test_both_reasons_are_given_when_both_checks_fail() -> None:
    norms = {"a": 1.0, "b": 1.0, "c": 500.0}
    reason = _validator(max_update_norm=50.0).rejections(norms)["c"]
    assert reason.startswith("update norm 500 exceeds max_update_norm 50; ")
    assert "500x the median" in reason


def test_others_that_left_the_model_unchanged_make_any_move_an_outlier() -> None:
    norms = {"a": 0.0, "b": 0.0, "c": 0.5}
    assert _validator().rejections(norms) == {
        "c": "update norm 0.5 while the median of the other sites' norms is 0 (they left "
        "the model unchanged); outlier_factor 10"
    }


def test_a_non_finite_norm_is_rejected_and_left_out_of_the_median() -> None:
    norms = {"a": 1.0, "b": 1.1, "c": 1.2, "d": float("inf")}
    assert _validator().rejections(norms) == {"d": "update norm inf is not a finite number"}
    with pytest.raises(ValueError, match=">= 0"):
        _validator().rejections({"a": -1.0})


def test_a_round_of_real_replies_through_accept_update_then_the_norms() -> None:
    """How the server uses both: per-reply checks first, then the norms of the survivors."""
    steps = {"a": 0.01, "b": 0.012, "c": 0.011, "scaled": 1.0, "nan": np.nan}
    replies = {name: train_reply(GLOBAL + np.float32(step)) for name, step in steps.items()}
    privacy = RunPrivacy(RunSettings())
    accepted: dict[str, np.ndarray] = {}
    rejected: dict[str, str] = {}
    for name, reply in replies.items():
        try:
            accepted[name] = accept_update(SITE, reply, GLOBAL, privacy, dp=False).weights
        except UpdateShapeError as err:
            rejected[name] = str(err)
    rejected |= _validator(max_update_norm=2.0).check_norms(GLOBAL, accepted)
    assert sorted(rejected) == ["nan", "scaled"]
    assert "NaN" in rejected["nan"] and "the median of the other sites' norms" in rejected["scaled"]
