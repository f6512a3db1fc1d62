"""DICOM SEG label maps, written with highdicom for factory-made series and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from consortia.client.data.dicom.labels import read_seg_label
from consortia.client.data.dicom.series import read_dicom_folder, read_dicom_series
from consortia.client.data.formats.volume import CaseProblem
from tests.support.dicom_factory import write_seg, write_series

OBLIQUE = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal slices


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    """Two segments on a few slices, slice 0 empty, with an asymmetric footprint."""
    labels = np.zeros(shape, dtype=np.int64)
    last = min(3, shape[0] - 1)
    labels[1, 1:3, 1:3] = 1
    labels[last, 2:4, 0:2] = 2
    labels[last, 0, 4] = 1
    return labels


def test_seg_frames_land_on_their_referenced_slices(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", n_slices=5, orientation=OBLIQUE)
    series = read_dicom_folder(tmp_path / "ct")
    labels = _labels((5, 6, 5))
    seg = write_seg(tmp_path / "seg.dcm", written.files, labels)
    before = seg.read_bytes()
    result = read_seg_label(seg, series)
    assert result.dtype == np.int64
    assert result.shape == series.volume.spatial_shape
    np.testing.assert_array_equal(result, labels)
    assert seg.read_bytes() == before


def test_seg_of_a_multi_frame_image_is_placed_by_plane_position(tmp_path: Path) -> None:
    written = write_series(tmp_path / "mr", n_slices=5, multi_frame=True, modality="MR")
    series = read_dicom_folder(tmp_path / "mr")
    labels = _labels((5, 6, 5))
    seg = write_seg(tmp_path / "seg.dcm", written.files, labels)
    np.testing.assert_array_equal(read_seg_label(seg, series), labels)


def test_seg_without_preserved_locations_falls_back_to_positions(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", n_slices=5)
    series = read_dicom_folder(tmp_path / "ct")
    labels = _labels((5, 6, 5))
    seg_path = write_seg(tmp_path / "seg.dcm", written.files, labels)
    ds = pydicom.dcmread(seg_path)
    for group in ds.PerFrameFunctionalGroupsSequence:
        for derivation in group.DerivationImageSequence:
            for source in derivation.SourceImageSequence:
                del source.SpatialLocationsPreserved
    ds.save_as(tmp_path / "seg_nosl.dcm")
    np.testing.assert_array_equal(read_seg_label(tmp_path / "seg_nosl.dcm", series), labels)


def test_seg_for_a_single_slice_image(tmp_path: Path) -> None:
    written = write_series(tmp_path / "one", n_slices=1)
    series = read_dicom_folder(tmp_path / "one")
    labels = np.zeros((1, 6, 5), dtype=np.int64)
    labels[0, 2:5, 1:4] = 1
    seg = write_seg(tmp_path / "seg.dcm", written.files, labels)
    result = read_seg_label(seg, series)
    assert result.shape == (6, 5)
    np.testing.assert_array_equal(result, labels[0])


def test_seg_referencing_another_series(tmp_path: Path) -> None:
    first = write_series(tmp_path / "a", n_slices=3, seed=1)
    write_series(tmp_path / "b", n_slices=3, seed=2)
    seg = write_seg(tmp_path / "seg.dcm", first.files, _labels((3, 6, 5)) % 2)
    with pytest.raises(CaseProblem) as info:
        read_seg_label(seg, read_dicom_folder(tmp_path / "b"))
    assert info.value.path == str(seg)
    assert "another image series" in info.value.reason


def test_seg_referencing_slices_missing_from_the_series(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", n_slices=5)
    seg = write_seg(tmp_path / "seg.dcm", written.files, _labels((5, 6, 5)))
    partial = read_dicom_series(written.files[:3])
    with pytest.raises(CaseProblem, match="references 2 image"):
        read_seg_label(seg, partial)


def test_seg_with_frames_of_another_size(tmp_path: Path) -> None:
    written = write_series(tmp_path / "small", n_slices=3, rows=6)
    seg = write_seg(tmp_path / "seg.dcm", written.files, _labels((3, 6, 5)) % 2)
    write_series(tmp_path / "large", n_slices=3, rows=7, series_uid=written.series_uid)
    with pytest.raises(CaseProblem, match="SEG frames are 6x5 pixels but the image slices are 7x5"):
        read_seg_label(seg, read_dicom_folder(tmp_path / "large"))


def test_overlapping_segments_are_reported(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", n_slices=3)
    masks = np.zeros((3, 6, 5, 2), dtype=bool)
    masks[1, 1:4, 1:4, 0] = True
    masks[1, 2:5, 2:5, 1] = True
    seg = write_seg(tmp_path / "seg.dcm", written.files, masks)
    with pytest.raises(CaseProblem, match="overlap"):
        read_seg_label(seg, read_dicom_folder(tmp_path / "ct"))


def test_files_that_are_not_seg(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", n_slices=2)
    series = read_dicom_folder(tmp_path / "ct")
    with pytest.raises(CaseProblem) as info:
        read_seg_label(written.files[0], series)
    assert info.value.path == str(written.files[0])
    text = tmp_path / "seg.txt"
    text.write_text("not DICOM")
    with pytest.raises(CaseProblem, match="not a DICOM file"):
        read_seg_label(text, series)
