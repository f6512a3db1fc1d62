"""A site's kept release: the same round of the same run from the same global model is
answered from it; another model or round is not."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from consortia.client.release_cache import Release, ReleaseCache, ReleaseCacheError, model_sha256


def _release(round_number: int, start: np.ndarray) -> Release:
    return Release(
        round=round_number,
        global_sha256=model_sha256(start),
        weights=np.arange(5, dtype=np.float32),
        metrics={"num-examples": 16.0, "train-loss": 0.5},
        privacy={"epsilon": 1.5, "steps": 4},
    )


def test_release_is_found_for_its_round_and_model(tmp_path: Path) -> None:
    cache = ReleaseCache(tmp_path / "releases")
    start = np.zeros(5, dtype=np.float32)
    cache.save("study-1", _release(2, start))
    found = cache.load("study-1", 2, model_sha256(start))
    assert found is not None
    np.testing.assert_array_equal(found.weights, np.arange(5, dtype=np.float32))
    assert found.privacy == {"epsilon": 1.5, "steps": 4}
    assert found.metrics["num-examples"] == 16.0
    mode = stat.S_IMODE((tmp_path / "releases" / "study-1.npz").stat().st_mode)
    assert mode == 0o600


def test_other_round_or_run_has_none(tmp_path: Path) -> None:
    cache = ReleaseCache(tmp_path)
    start = np.zeros(5, dtype=np.float32)
    cache.save("study-1", _release(2, start))
    assert cache.load("study-1", 3, model_sha256(start)) is None
    assert cache.load("study-2", 2, model_sha256(start)) is None
    cache.save("study-1", _release(3, start))  # the next round replaces it
    assert cache.load("study-1", 2, model_sha256(start)) is None


def test_other_global_model_is_refused(tmp_path: Path) -> None:
    cache = ReleaseCache(tmp_path)
    cache.save("study-1", _release(2, np.zeros(5, dtype=np.float32)))
    with pytest.raises(ReleaseCacheError, match="another global model"):
        cache.load("study-1", 2, model_sha256(np.ones(5, dtype=np.float32)))


def test_unreadable_release_and_bad_run_id(tmp_path: Path) -> None:
    cache = ReleaseCache(tmp_path)
    (tmp_path / "study-1.npz").write_bytes(b"not an archive")
    with pytest.raises(ReleaseCacheError, match="unreadable"):
        cache.load("study-1", 2, "0" * 64)
    with pytest.raises(ReleaseCacheError, match="not a valid run name"):
        cache.load("../escape", 2, "0" * 64)
