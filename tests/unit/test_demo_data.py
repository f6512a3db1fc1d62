"""Tests for the SYNTHETIC demo-federation generator (consortia.common.demo.data)."""

from __future__ import annotations

import functools
import hashlib
import itertools
import subprocess
import sys
import time
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage  # type: ignore[import-untyped,unused-ignore]

from consortia.common.demo import data as demo_data
from consortia.common.demo.data import (
    DEMO_DESCRIPTION,
    KEY_DESCRIPTION,
    KEY_SITE_INDEX,
    KEY_SYNTHETIC,
    KEY_TEST_IMAGES,
    KEY_TEST_LABELS,
    KEY_TEST_MASKS,
    KEY_TRAIN_IMAGES,
    KEY_TRAIN_LABELS,
    KEY_TRAIN_MASKS,
    SPLIT_TEST,
    SPLIT_TRAIN,
    AcquisitionProfile,
    DemoDataSettings,
    SyntheticCases,
    generate_cases,
    generate_site,
    site_filename,
    site_profile,
    write_demo_federation,
    write_site_npz,
)

SMALL = DemoDataSettings(train_cases=24, test_cases=8, seed=7)
DEFAULT = DemoDataSettings()
IMAGE_KEYS = (KEY_TRAIN_IMAGES, KEY_TRAIN_MASKS, KEY_TEST_IMAGES, KEY_TEST_MASKS)
ALL_KEYS = {
    *IMAGE_KEYS,
    KEY_TRAIN_LABELS,
    KEY_TEST_LABELS,
    KEY_SYNTHETIC,
    KEY_SITE_INDEX,
    KEY_DESCRIPTION,
}


@functools.cache
def _default_cases(site: int, split: str = SPLIT_TRAIN) -> SyntheticCases:
    """Default-size cases, generated once per test session (callers must not modify them)."""
    return generate_cases(site, DEFAULT, split)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    sha = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        sha.update(key.encode())
        sha.update(str(value.dtype).encode())
        sha.update(str(value.shape).encode())
        sha.update(value.tobytes())
    return sha.hexdigest()


def _organ_noise(images: np.ndarray, region: np.ndarray) -> float:
    """Std of the high-pass residual inside ``region`` (noise plus fine texture)."""
    pixels = images.astype(np.float64)
    residual = pixels - ndimage.gaussian_filter(pixels, sigma=(0.0, 1.5, 1.5))
    return float(residual[region].std())


# --- module surface ---------------------------------------------------------------------------


def test_module_is_marked_synthetic_and_all_is_sorted() -> None:
    assert demo_data.__doc__ is not None
    assert "SYNTHETIC" in demo_data.__doc__

    # isort-style order, as ruff's RUF022 wants: CONSTANTS, then Classes, then functions.
    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert list(demo_data.__all__) == sorted(demo_data.__all__, key=kind)
    for name in demo_data.__all__:
        assert hasattr(demo_data, name), name
    assert "SYNTHETIC" in DEMO_DESCRIPTION
    assert "not patient data" in DEMO_DESCRIPTION


# --- determinism --------------------------------------------------------------------------------


def test_same_inputs_give_identical_arrays() -> None:
    first = generate_site(2, SMALL)
    second = generate_site(2, SMALL)
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].dtype == second[key].dtype, key
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_identical_in_a_fresh_process() -> None:
    code = (
        "from consortia.common.demo.data import DemoDataSettings, generate_site\n"
        "import hashlib, numpy as np\n"
        "arrays = generate_site(1, DemoDataSettings(train_cases=24, test_cases=8, seed=7))\n"
        "sha = hashlib.sha256()\n"
        "for key in sorted(arrays):\n"
        "    value = np.ascontiguousarray(arrays[key])\n"
        "    sha.update(key.encode()); sha.update(str(value.dtype).encode())\n"
        "    sha.update(str(value.shape).encode()); sha.update(value.tobytes())\n"
        "print(sha.hexdigest())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        timeout=120,
    )
    assert result.stdout.strip() == _digest(generate_site(1, SMALL))


def test_seed_and_site_change_the_images() -> None:
    base = generate_site(0, SMALL)[KEY_TRAIN_IMAGES]
    other_seed = generate_site(0, DemoDataSettings(train_cases=24, test_cases=8, seed=8))
    assert not np.array_equal(base, other_seed[KEY_TRAIN_IMAGES])
    for site in (1, 2, 3, 4, 5):
        assert not np.array_equal(base, generate_site(site, SMALL)[KEY_TRAIN_IMAGES]), site


def test_train_and_test_streams_are_independent_and_disjoint() -> None:
    train = generate_cases(0, SMALL, SPLIT_TRAIN)
    test = generate_cases(0, SMALL, SPLIT_TEST)
    train_bytes = {image.tobytes() for image in train.images}
    assert not train_bytes & {image.tobytes() for image in test.images}
    # The train split does not depend on how many test cases are asked for (separate seeds).
    more_test = DemoDataSettings(train_cases=24, test_cases=30, seed=7)
    np.testing.assert_array_equal(train.images, generate_cases(0, more_test, SPLIT_TRAIN).images)


# --- layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [32, 64, 96])
def test_shapes_dtypes_and_keys(image_size: int) -> None:
    settings = DemoDataSettings(image_size=image_size, train_cases=10, test_cases=6)
    arrays = generate_site(3, settings)
    assert set(arrays) == ALL_KEYS
    for key, n in (
        (KEY_TRAIN_IMAGES, 10),
        (KEY_TRAIN_MASKS, 10),
        (KEY_TEST_IMAGES, 6),
        (KEY_TEST_MASKS, 6),
    ):
        assert arrays[key].shape == (n, image_size, image_size), key
        assert arrays[key].dtype == np.uint8, key
    assert arrays[KEY_TRAIN_LABELS].shape == (10, 1)
    assert arrays[KEY_TEST_LABELS].shape == (6, 1)
    assert arrays[KEY_TRAIN_LABELS].dtype == np.uint8
    assert arrays[KEY_TEST_LABELS].dtype == np.uint8
    assert set(np.unique(arrays[KEY_TRAIN_MASKS])) <= {0, 1}
    for masks_key, labels_key in (
        (KEY_TRAIN_MASKS, KEY_TRAIN_LABELS),
        (KEY_TEST_MASKS, KEY_TEST_LABELS),
    ):
        expected = arrays[masks_key].any(axis=(1, 2)).astype(np.uint8)
        np.testing.assert_array_equal(arrays[labels_key][:, 0], expected)
    assert arrays[KEY_SYNTHETIC].shape == ()
    assert bool(arrays[KEY_SYNTHETIC]) is True
    assert int(arrays[KEY_SITE_INDEX]) == 3
    assert str(arrays[KEY_DESCRIPTION]) == DEMO_DESCRIPTION


@pytest.mark.parametrize("site", [0, 3, 6])
def test_labels_match_masks(site: int) -> None:
    for split in (SPLIT_TRAIN, SPLIT_TEST):
        cases = _default_cases(site, split)
        assert len(cases.masks) == len(cases.labels) == len(cases.images)
        np.testing.assert_array_equal(cases.labels, cases.masks.any(axis=(1, 2)).astype(np.uint8))


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_lesion_fraction_is_respected(fraction: float) -> None:
    settings = DemoDataSettings(train_cases=40, test_cases=12, lesion_fraction=fraction)
    arrays = generate_site(1, settings)
    assert int(arrays[KEY_TRAIN_LABELS].sum()) == round(fraction * 40)
    assert int(arrays[KEY_TEST_LABELS].sum()) == round(fraction * 12)


def test_default_federation_is_about_half_positive() -> None:
    labels = np.concatenate([_default_cases(site).labels for site in range(4)])
    assert 0.45 <= labels.mean() <= 0.55


@pytest.mark.parametrize("site", [0, 1, 2, 3, 4])
def test_lesions_lie_inside_the_organ_and_have_sensible_sizes(site: int) -> None:
    cases = _default_cases(site)
    assert np.all(cases.masks <= cases.organ_masks)
    assert cases.organ_masks.any(axis=(1, 2)).all()
    radii: list[float] = []
    for mask in cases.masks[cases.labels == 1]:
        components, count = ndimage.label(mask)
        assert 1 <= count <= 3
        areas = np.bincount(components.ravel())[1:]
        radii.extend(np.sqrt(areas / np.pi).tolist())
    radii_array = np.asarray(radii)
    # Radii of ~3-12 px at 64x64 (smaller when clipped by an overlap or the pixel grid).
    assert radii_array.min() >= 1.5
    assert radii_array.max() <= 13.0
    assert np.median(radii_array) >= 4.0


def test_lesions_scale_with_image_size() -> None:
    small = generate_cases(0, DemoDataSettings(image_size=32, train_cases=40), SPLIT_TRAIN)
    large = generate_cases(0, DemoDataSettings(image_size=128, train_cases=40), SPLIT_TRAIN)
    small_fraction = small.masks[small.labels == 1].mean()
    large_fraction = large.masks[large.labels == 1].mean()
    assert small.labels.sum() == large.labels.sum() == 20
    assert 0.5 < small_fraction / large_fraction < 2.0


# --- domain shift and learnability -----------------------------------------------------------


def test_first_profiles_are_distinct_and_derived_profiles_are_stable() -> None:
    profiles = [site_profile(index) for index in range(8)]
    assert len({profile.name for profile in profiles}) == 8
    assert len(set(profiles)) == 8
    assert site_profile(11) == site_profile(11)
    held_out, training = profiles[3], profiles[:3]
    # The held-out site lies outside the training sites' range in several respects.
    assert held_out.blur_sigma > max(profile.blur_sigma for profile in training)
    assert held_out.gamma > max(profile.gamma for profile in training)
    assert held_out.bias_strength > max(profile.bias_strength for profile in training)
    for field_name in ("gamma", "name"):
        with pytest.raises(FrozenInstanceError):
            setattr(profiles[0], field_name, 2.0)


def test_sites_differ_in_intensity_statistics() -> None:
    stats = []
    for site in range(4):
        cases = _default_cases(site)
        pixels = cases.images.astype(np.float64)
        organ = (cases.organ_masks == 1) & (cases.masks == 0)
        stats.append(
            np.array(
                [pixels.mean(), pixels.std(), pixels[organ].mean(), _organ_noise(pixels, organ)]
            )
        )
    for first, second in itertools.combinations(range(4), 2):
        relative = np.abs(stats[first] - stats[second]) / np.maximum(stats[first], stats[second])
        assert relative.max() > 0.15, (first, second, stats[first], stats[second])


@pytest.mark.parametrize("site", [0, 1, 2, 3, 4, 5])
def test_lesion_contrast_to_noise_ratio_is_high_enough(site: int) -> None:
    cases = _default_cases(site)
    ratios = []
    for index in np.flatnonzero(cases.labels):
        image = cases.images[index].astype(np.float64)
        lesion = cases.masks[index].astype(bool)
        core = ndimage.binary_erosion(lesion)
        if core.sum() < 4:
            core = lesion
        background = cases.organ_masks[index].astype(bool) & ~ndimage.binary_dilation(
            lesion, iterations=2
        )
        ratios.append((image[core].mean() - image[background].mean()) / image[background].std())
    ratios_array = np.asarray(ratios)
    assert np.median(ratios_array) > 2.0
    assert np.percentile(ratios_array, 10) > 1.5


def test_generation_time_is_reasonable() -> None:
    generate_site(0, SMALL)  # warm-up (imports, caches)
    # CPU time of this process, so that other busy processes on the machine do not count.
    start = time.process_time()
    for site in range(4):
        generate_site(site, DEFAULT)
    elapsed = time.process_time() - start
    # About 0.6 s on an idle 2-core machine; the bound leaves room for slow CI runners.
    assert elapsed < 3.0, elapsed


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"image_size": 31}, "image_size"),
        ({"image_size": 513}, "image_size"),
        ({"train_cases": 0}, "train_cases"),
        ({"test_cases": 0}, "test_cases"),
        ({"test_cases": -3}, "test_cases"),
        ({"lesion_fraction": -0.1}, "lesion_fraction"),
        ({"lesion_fraction": 1.5}, "lesion_fraction"),
        ({"lesion_fraction": float("nan")}, "lesion_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DemoDataSettings(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"image_size": 64.0}, "image_size"),
        ({"train_cases": True}, "train_cases"),
        ({"seed": "0"}, "seed"),
        ({"lesion_fraction": "0.5"}, "lesion_fraction"),
    ],
)
def test_wrong_setting_types_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(TypeError, match=field):
        DemoDataSettings(**kwargs)


def test_negative_site_index_raises() -> None:
    with pytest.raises(ValueError, match="site_index"):
        generate_site(-1, SMALL)
    with pytest.raises(ValueError, match="site_index"):
        site_profile(-1)
    with pytest.raises(ValueError, match="site_index"):
        generate_cases(-2, SMALL, SPLIT_TRAIN)


def test_bad_split_and_profile_raise() -> None:
    with pytest.raises(ValueError, match="split"):
        generate_cases(0, SMALL, "validation")
    with pytest.raises(ValueError, match="gamma"):
        AcquisitionProfile("bad", 1.0, 0.0, 0.0, 0.01, 0.0, 0.0)
    with pytest.raises(ValueError, match="noise_std"):
        AcquisitionProfile("bad", 1.0, 0.0, 1.0, -0.01, 0.0, 0.0)


# --- writing ------------------------------------------------------------------------------------


def test_write_site_npz_round_trip(tmp_path: Path) -> None:
    path = write_site_npz(tmp_path / "site_x.npz", 2, SMALL)
    assert path == tmp_path / "site_x.npz"
    expected = generate_site(2, SMALL)
    with np.load(path, allow_pickle=False) as loaded:
        assert set(loaded.files) == ALL_KEYS
        for key, value in expected.items():
            np.testing.assert_array_equal(loaded[key], value, err_msg=key)
            assert loaded[key].dtype == value.dtype, key
        assert bool(loaded[KEY_SYNTHETIC])
        assert "SYNTHETIC" in str(loaded[KEY_DESCRIPTION])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site_x.npz"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_no_silent_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "site.npz"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"site\.npz"):
        write_site_npz(path, 0, SMALL)
    assert path.read_bytes() == b"precious"
    write_site_npz(path, 0, SMALL, overwrite=True)
    with np.load(path) as loaded:
        assert int(loaded[KEY_SITE_INDEX]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.npz"]


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", explode)
    with pytest.raises(OSError, match="disk full"):
        write_site_npz(tmp_path / "site.npz", 0, SMALL)
    assert list(tmp_path.iterdir()) == []


def test_write_demo_federation(tmp_path: Path) -> None:
    root = tmp_path / "federation"
    paths = write_demo_federation(root, 4, SMALL)
    assert paths == [root / site_filename(index) for index in range(4)]
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in paths)
    for index, path in enumerate(paths):
        with np.load(path) as loaded:
            assert int(loaded[KEY_SITE_INDEX]) == index
    digest_before = [path.read_bytes() for path in paths]
    with pytest.raises(FileExistsError, match=r"site_0\.npz"):
        write_demo_federation(root, 4, SMALL)
    assert [path.read_bytes() for path in paths] == digest_before
    write_demo_federation(root, 4, SMALL, overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in paths)


def test_federation_refuses_before_writing_anything(tmp_path: Path) -> None:
    (tmp_path / site_filename(2)).write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"site_2\.npz"):
        write_demo_federation(tmp_path, 3, SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [site_filename(2)]
    with pytest.raises(ValueError, match="num_sites"):
        write_demo_federation(tmp_path, 0, SMALL)


def test_chunked_generation_keeps_counts_and_determinism(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_data, "_CHUNK_PIXELS", 64 * 64 * 5)  # 5 cases per chunk
    settings = DemoDataSettings(train_cases=23, test_cases=4, lesion_fraction=0.3)
    cases = generate_cases(4, settings, SPLIT_TRAIN)
    assert int(cases.labels.sum()) == round(0.3 * 23)
    assert np.all(cases.masks <= cases.organ_masks)
    np.testing.assert_array_equal(cases.labels, cases.masks.any(axis=(1, 2)).astype(np.uint8))
    np.testing.assert_array_equal(cases.images, generate_cases(4, settings, SPLIT_TRAIN).images)
    assert len({image.tobytes() for image in cases.images}) == 23
