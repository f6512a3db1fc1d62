"""NIfTI images and label maps, and labels put on the grid of a NIfTI or DICOM image."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from consortia.client.data.dicom.series import read_dicom_folder
from consortia.client.data.formats.nifti import read_nifti, read_nifti_label
from consortia.client.data.formats.volume import CaseProblem, ImageVolume
from tests.support.dicom_factory import WrittenSeries, write_series

HIPPOCAMPUS = Path("/work/shared/data/hippocampus")

# RAS affine: i -> x (1.5 mm), j -> -z (2 mm, i.e. inferior), k -> y (3 mm)
AFFINE = np.array(
    [
        [1.5, 0.0, 0.0, -10.0],
        [0.0, 0.0, 3.0, 20.0],
        [0.0, -2.0, 0.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _nibabel_file(name: str) -> Path:
    """A file of nibabel's bundled test data (a folder in an installed nibabel)."""
    path = data_path / name
    assert isinstance(path, Path), f"nibabel's test data is not a folder: {path}"
    return path


def _ramp(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


# --- images ----------------------------------------------------------------------------


def test_3d_image_axes_spacing_and_lps_geometry(tmp_path: Path) -> None:
    data = _ramp((4, 5, 6))  # (i, j, k)
    volume = read_nifti(_save(data, AFFINE, tmp_path / "img.nii.gz"))
    assert volume.array.dtype == np.float32
    assert volume.array.shape == (1, 6, 5, 4)  # (C, D=k, H=j, W=i)
    np.testing.assert_array_equal(volume.array[0], data.T)
    assert volume.array[0, 3, 2, 1] == data[1, 2, 3]
    assert volume.spacing == pytest.approx((3.0, 2.0, 1.5))
    assert volume.origin == pytest.approx((10.0, -20.0, 30.0))  # RAS -> LPS
    assert volume.direction is not None
    np.testing.assert_allclose(
        volume.direction, [[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]], atol=1e-12
    )


def test_2d_and_4d_images(tmp_path: Path) -> None:
    flat = _ramp((4, 5))
    volume = read_nifti(_save(flat, np.diag([0.5, 0.25, 1.0, 1.0]), tmp_path / "2d.nii"))
    assert volume.array.shape == (1, 5, 4)
    assert volume.spacing == pytest.approx((0.25, 0.5))
    np.testing.assert_array_equal(volume.array[0], flat.T)
    four = _ramp((4, 5, 6, 3))
    volume = read_nifti(_save(four, AFFINE, tmp_path / "4d.nii.gz"))
    assert volume.array.shape == (3, 6, 5, 4)
    np.testing.assert_array_equal(volume.array[2], four[..., 2].T)


def test_nibabel_example_files() -> None:
    example = read_nifti(_nibabel_file("example4d.nii.gz"))  # (128, 96, 24, 2) int16
    assert example.array.shape == (2, 24, 96, 128)
    nifti2 = read_nifti(_nibabel_file("example_nifti2.nii.gz"))
    assert nifti2.array.shape == (2, 12, 20, 32)
    anatomical = read_nifti(_nibabel_file("anatomical.nii"))  # big-endian int16
    assert anatomical.array.shape == (1, 25, 41, 33)
    assert anatomical.spacing == pytest.approx((2.0, 2.0, 2.0))


def test_unreadable_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(CaseProblem) as info:
        read_nifti(garbage)
    assert info.value.path == str(garbage)
    good = _save(_ramp((20, 20, 20)), AFFINE, tmp_path / "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(CaseProblem, match="truncated"):
        read_nifti(truncated)
    with pytest.raises(CaseProblem, match="file not found"):
        read_nifti(tmp_path / "missing.nii.gz")
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(CaseProblem):
        read_nifti(png)


# --- labels on a NIfTI image -----------------------------------------------------------


def test_label_on_its_own_image_and_permuted_copies(tmp_path: Path) -> None:
    image = read_nifti(_save(_ramp((4, 5, 6)), AFFINE, tmp_path / "img.nii.gz"))
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[1, 2, 3] = 1
    labels[0, 4, 5] = 2
    expected = labels.T.astype(np.int64)
    same = read_nifti_label(_save(labels, AFFINE, tmp_path / "lab.nii.gz"), image)
    assert same.dtype == np.int64
    np.testing.assert_array_equal(same, expected)
    # the same voxels stored with the axes swapped (j <-> k) and i reversed
    swapped = np.transpose(labels, (0, 2, 1))[::-1]
    affine = AFFINE[:, [0, 2, 1, 3]].copy()
    affine[:3, 3] = AFFINE[:3, :3] @ [3, 0, 0] + AFFINE[:3, 3]  # voxel 0 is the old i = 3
    affine[:, 0] *= -1
    moved = read_nifti_label(_save(swapped, affine, tmp_path / "swapped.nii.gz"), image)
    np.testing.assert_array_equal(moved, expected)


def test_labels_must_be_non_negative_integers(tmp_path: Path) -> None:
    image = read_nifti(_save(_ramp((4, 5, 6)), AFFINE, tmp_path / "img.nii.gz"))
    fractional = np.zeros((4, 5, 6), dtype=np.float32)
    fractional[1, 1, 1] = 0.5
    with pytest.raises(CaseProblem, match="integers"):
        read_nifti_label(_save(fractional, AFFINE, tmp_path / "frac.nii.gz"), image)
    whole = np.zeros((4, 5, 6), dtype=np.float32)
    whole[1, 1, 1] = 2.0  # integral values stored as float: accepted
    assert read_nifti_label(_save(whole, AFFINE, tmp_path / "float.nii.gz"), image).max() == 2
    negative = np.zeros((4, 5, 6), dtype=np.int16)
    negative[0, 0, 0] = -1
    with pytest.raises(CaseProblem, match="negative"):
        read_nifti_label(_save(negative, AFFINE, tmp_path / "neg.nii.gz"), image)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shape", "label shape (5, 5, 4) differs from image shape (6, 5, 4)"),
        ("spacing", "spacing"),
        ("origin", "label origin is 3 mm from the image origin"),
        ("rotation", "orientation differs"),
    ],
)
def test_label_grid_mismatch_says_what_differs(tmp_path: Path, change: str, message: str) -> None:
    image = read_nifti(_save(_ramp((4, 5, 6)), AFFINE, tmp_path / "img.nii.gz"))
    shape, affine = (4, 5, 6), AFFINE.copy()
    if change == "shape":
        shape = (4, 5, 5)
    elif change == "spacing":
        affine[:3, 2] *= 1.2
    elif change == "origin":
        affine[0, 3] += 3.0
    else:
        angle = np.radians(20)
        rotation = np.array(
            [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
        )
        affine[:3, :3] = rotation @ affine[:3, :3]
    path = _save(np.zeros(shape, dtype=np.uint8), affine, tmp_path / "lab.nii.gz")
    with pytest.raises(CaseProblem) as info:
        read_nifti_label(path, image)
    assert info.value.path == str(path)
    assert message in info.value.reason


def test_reference_without_geometry_compares_shapes_only(tmp_path: Path) -> None:
    reference = ImageVolume(array=np.zeros((1, 6, 5, 4), np.float32), spacing=(1.0, 1.0, 1.0))
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[3, 0, 0] = 1
    result = read_nifti_label(_save(labels, AFFINE, tmp_path / "lab.nii.gz"), reference)
    assert result[0, 0, 3] == 1
    with pytest.raises(CaseProblem, match="only the shapes"):
        read_nifti_label(_save(labels[:3], AFFINE, tmp_path / "small.nii.gz"), reference)


# --- labels drawn for a DICOM series ---------------------------------------------------


def _mask_for(written: WrittenSeries) -> np.ndarray:
    """A (D, H, W) label map with an asymmetric footprint."""
    mask = np.zeros(written.values.shape, dtype=np.uint8)
    mask[1, 1:3, 0:2] = 1
    mask[2, 4, 3] = 2
    return mask


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1)])
def test_nifti_mask_for_a_dicom_series_lands_on_its_voxels(
    tmp_path: Path, orientation: tuple[float, ...]
) -> None:
    written = write_series(tmp_path / "ct", n_slices=4, orientation=orientation)
    series = read_dicom_folder(tmp_path / "ct")
    mask = _mask_for(written)
    affine = written.nifti_affine()
    path = _save(mask.T, affine, tmp_path / "mask.nii.gz")  # as a converter writes it
    np.testing.assert_array_equal(read_nifti_label(path, series.volume), mask)

    # the same mask with the row axis (j) flipped, as dcm2niix-style tools store it
    flipped_affine = affine.copy()
    flipped_affine[:3, 3] = affine[:3, :3] @ [0, mask.shape[1] - 1, 0] + affine[:3, 3]
    flipped_affine[:, 1] *= -1
    path = _save(mask.T[:, ::-1], flipped_affine, tmp_path / "flipped.nii.gz")
    np.testing.assert_array_equal(read_nifti_label(path, series.volume), mask)

    # an image converted to NIfTI from the same series gets the same mask back
    image = read_nifti(_save(written.values.T, affine, tmp_path / "image.nii.gz"))
    np.testing.assert_allclose(image.array[0], series.volume.array[0])
    assert image.direction is not None
    assert series.volume.direction is not None
    np.testing.assert_allclose(image.direction, series.volume.direction, atol=1e-6)
    assert image.origin == pytest.approx(series.volume.origin)
    np.testing.assert_array_equal(read_nifti_label(path, image), mask)


def test_2d_nifti_mask_for_a_single_slice_dicom_image(tmp_path: Path) -> None:
    written = write_series(tmp_path / "one", n_slices=1)
    image = read_dicom_folder(tmp_path / "one").volume
    mask = np.zeros((6, 5), dtype=np.uint8)
    mask[4, 1] = 1
    path = _save(mask.T, written.nifti_affine(), tmp_path / "mask.nii.gz")  # (i, j) only
    result = read_nifti_label(path, image)
    assert result.shape == (6, 5)
    np.testing.assert_array_equal(result, mask)


def test_nifti_mask_one_slice_short_of_the_dicom_series(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", n_slices=4)
    series = read_dicom_folder(tmp_path / "ct")
    path = _save(_mask_for(written)[:3].T, written.nifti_affine(), tmp_path / "mask.nii.gz")
    with pytest.raises(CaseProblem, match=r"label shape \(3, 6, 5\) differs"):
        read_nifti_label(path, series.volume)


# --- real data -------------------------------------------------------------------------


def test_hippocampus_image_and_label() -> None:
    images = sorted((HIPPOCAMPUS / "images").glob("*.nii.gz"))
    if not images or not (HIPPOCAMPUS / "labels" / images[0].name).exists():
        pytest.skip(f"hippocampus data not found under {HIPPOCAMPUS} (shared data set absent)")
    image = read_nifti(images[0])
    labels = read_nifti_label(HIPPOCAMPUS / "labels" / images[0].name, image)
    assert image.array.ndim == 4 and image.array.shape[0] == 1
    assert labels.shape == image.spatial_shape
    assert set(np.unique(labels).tolist()) <= {0, 1, 2}
    assert labels.max() > 0
