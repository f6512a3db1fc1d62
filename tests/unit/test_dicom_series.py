"""DICOM series reading: grouping, ordering, geometry, codecs and every bad-input case."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import convert_color_space, pixel_array
from pydicom.uid import (
    HEVCMP51,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from consortia.client.data.dicom.series import (
    DicomSeries,
    missing_codec,
    read_dicom_folder,
    read_dicom_series,
    scan_dicom_folder,
)
from consortia.client.data.formats.volume import CaseProblem
from tests.support.dicom_factory import declare_transfer_syntax, truncate_file, write_series

SECRET_ID = "SECRET-PID-4242"
SECRET_NAME = "Secretname^Patient"


def _bundled(name: str, folder: Path) -> Path:
    """Copy one of pydicom's bundled test files into its own folder."""
    source = get_testdata_file(name)
    assert source is not None, name
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, folder / name))


def _problem(call: Callable[..., object], *args: Any, **kwargs: Any) -> CaseProblem:
    with pytest.raises(CaseProblem) as info:
        call(*args, **kwargs)
    return info.value


# --- ordering, geometry, values --------------------------------------------------------


def test_series_is_sorted_by_position_with_rescale_and_geometry(tmp_path: Path) -> None:
    written = write_series(
        tmp_path / "ct", n_slices=5, rescale_slope=2.0, rescale_intercept=-1000.0
    )
    series = read_dicom_folder(tmp_path / "ct")
    assert isinstance(series, DicomSeries)
    volume = series.volume
    assert volume.array.dtype == np.float32
    assert volume.array.shape == (1, 5, 6, 5)
    np.testing.assert_array_equal(volume.array[0], written.values)
    assert volume.array.min() < 0  # the intercept was applied
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert volume.origin == pytest.approx(tuple(written.positions[0]))
    assert volume.direction is not None
    np.testing.assert_allclose(volume.direction, written.direction)
    # file names run against slice order: the reader must not sort by path
    assert sorted(series.files) != list(series.files)
    assert series.files == written.files
    assert series.sop_instance_uids == written.sop_instance_uids
    assert series.series_uid == written.series_uid
    assert series.patient_id == "PAT-001"
    assert (volume.modality, volume.manufacturer) == ("CT", "Consortia Test Scanner")


def test_oblique_series_is_sorted_along_the_slice_normal(tmp_path: Path) -> None:
    angle = np.radians(30)
    row = (np.cos(angle), np.sin(angle), 0.0)
    column = (0.0, 0.0, -1.0)  # a coronal-ish oblique plane
    normal = np.cross(row, column)
    origin = np.array([5.0, -7.0, 12.0])
    order = [2, 0, 3, 1]  # positions written out of order
    positions = [origin + i * 3.0 * normal for i in order]
    written = write_series(
        tmp_path / "oblique",
        n_slices=4,
        orientation=(*row, *column),
        positions=positions,
        slice_spacing=3.0,
    )
    series = read_dicom_folder(tmp_path / "oblique")
    assert series.volume.origin == pytest.approx(tuple(origin))
    assert series.volume.spacing[0] == pytest.approx(3.0)
    assert series.volume.direction is not None
    np.testing.assert_allclose(series.volume.direction[2], normal, atol=1e-9)
    # slice d of the volume is the written slice whose position is d steps along the normal
    expected = written.values[np.argsort(order)]
    np.testing.assert_array_equal(series.volume.array[0], expected)
    assert series.files == tuple(written.files[i] for i in np.argsort(order))


def test_instance_number_orders_slices_without_positions(tmp_path: Path) -> None:
    written = write_series(
        tmp_path / "nopos",
        n_slices=3,
        instance_numbers=[30, 10, 20],
        omit=("ImagePositionPatient",),
    )
    series = read_dicom_folder(tmp_path / "nopos")
    np.testing.assert_array_equal(series.volume.array[0], written.values[[1, 2, 0]])
    assert series.volume.origin is None
    assert series.volume.spacing[0] == pytest.approx(2.5)  # from SliceThickness
    problem = _problem(
        read_dicom_series,
        write_series(
            tmp_path / "noorder", n_slices=2, omit=("ImagePositionPatient", "InstanceNumber")
        ).files,
    )
    assert "cannot order the slices" in problem.reason


def test_single_slice_is_2d(tmp_path: Path) -> None:
    written = write_series(tmp_path / "one", n_slices=1)
    volume = read_dicom_folder(tmp_path / "one").volume
    assert volume.array.shape == (1, 6, 5)
    assert volume.spacing == pytest.approx((0.8, 0.7))
    np.testing.assert_array_equal(volume.array[0], written.values[0])
    bare = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "InstanceNumber")
    write_series(tmp_path / "bare", n_slices=1, omit=bare)
    volume = read_dicom_folder(tmp_path / "bare").volume
    assert volume.array.shape == (1, 6, 5)
    assert volume.spacing == (1.0, 1.0)  # no PixelSpacing: 1 mm assumed
    assert (volume.origin, volume.direction) == (None, None)


def test_multi_frame_uses_per_frame_positions(tmp_path: Path) -> None:
    written = write_series(
        tmp_path / "mf", n_slices=4, multi_frame=True, modality="MR", rescale_slope=0.5
    )
    series = read_dicom_folder(tmp_path / "mf")
    # frames are stored in reverse slice order; the reader sorts them by position
    np.testing.assert_array_equal(series.volume.array[0], written.values)
    assert series.volume.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert series.volume.origin == pytest.approx(tuple(written.positions[0]))
    assert series.files == written.files
    assert series.sop_instance_uids == written.sop_instance_uids
    assert len(set(series.sop_instance_uids)) == 1


def test_multi_frame_with_shared_spacing_only(tmp_path: Path) -> None:
    written = write_series(tmp_path / "mf", n_slices=3, multi_frame=True, per_frame_positions=False)
    volume = read_dicom_folder(tmp_path / "mf").volume
    np.testing.assert_array_equal(volume.array[0], written.values)
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert volume.origin == pytest.approx(tuple(written.positions[0]))


def test_bundled_multi_frame_rtdose_uses_grid_frame_offsets(tmp_path: Path) -> None:
    path = _bundled("rtdose.dcm", tmp_path / "dose")
    ds = pydicom.dcmread(path)
    volume = read_dicom_series([path]).volume
    assert volume.array.shape == (1, 15, 10, 10)
    offsets = np.array(ds.GridFrameOffsetVector, dtype=float)
    assert volume.spacing[0] == pytest.approx(abs(offsets[1] - offsets[0]))


# --- colour ----------------------------------------------------------------------------


def test_colour_series_has_three_channels(tmp_path: Path) -> None:
    written = write_series(tmp_path / "rgb", n_slices=2, colour=True)
    volume = read_dicom_folder(tmp_path / "rgb").volume
    assert volume.array.shape == (3, 2, 6, 5)
    np.testing.assert_array_equal(np.moveaxis(volume.array, 0, -1), written.values)


@pytest.mark.filterwarnings("ignore:Expected explicit VR")  # how pydicom's file is encoded
def test_jpeg_baseline_rgb_file(tmp_path: Path) -> None:
    path = _bundled("SC_rgb_jpeg.dcm", tmp_path / "jpeg")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    volume = read_dicom_series([path]).volume
    assert volume.array.shape == (3, 256, 256)
    np.testing.assert_array_equal(
        np.moveaxis(volume.array, 0, -1), pydicom.dcmread(path).pixel_array
    )


def test_ybr_multi_frame_is_converted_to_rgb(tmp_path: Path) -> None:
    path = _bundled("examples_ybr_color.dcm", tmp_path / "us")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    volume = read_dicom_series([path]).volume
    assert volume.array.shape == (3, 30, 240, 320)
    ybr = pixel_array(path, as_rgb=False)
    rgb = convert_color_space(ybr, "YBR_FULL", "RGB")
    np.testing.assert_array_equal(np.moveaxis(volume.array, 0, -1), rgb)


def test_palette_colour_becomes_rgb(tmp_path: Path) -> None:
    path = _bundled("examples_palette.dcm", tmp_path / "pal")
    volume = read_dicom_series([path]).volume
    assert volume.array.shape == (3, 350, 800)
    assert volume.array.max() > 255  # 16-bit palette entries, not the 8-bit indices


# --- codecs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("MR_small_RLE.dcm", RLELossless),
        ("MR_small_jp2klossless.dcm", JPEG2000Lossless),
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
        ("MR_small_bigendian.dcm", ExplicitVRBigEndian),
        ("MR_small_implicit.dcm", ImplicitVRLittleEndian),
    ],
)
def test_other_encodings_decode_like_the_explicit_little_endian_file(
    tmp_path: Path, name: str, syntax: str
) -> None:
    reference = read_dicom_series([_bundled("MR_small.dcm", tmp_path / "plain")]).volume
    path = _bundled(name, tmp_path / "compressed")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    volume = read_dicom_series([path]).volume
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.spacing == reference.spacing


def test_compressed_factory_series(tmp_path: Path) -> None:
    written = write_series(tmp_path / "rle", n_slices=3, transfer_syntax=RLELossless)
    series = read_dicom_folder(tmp_path / "rle")
    np.testing.assert_array_equal(series.volume.array[0], written.values)


def test_missing_codec_answers_from_the_decoder_registry() -> None:
    for syntax in (ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEG2000Lossless, RLELossless):
        assert missing_codec(syntax) is None
    message = missing_codec(HEVCMP51)
    assert message is not None
    assert "HEVC/H.265 Main Profile / Level 5.1" in message
    assert HEVCMP51 in message
    assert 'pip install "consortia[codecs]"' in message
    unknown = missing_codec("1.2.840.10008.1.2.4.110")  # JPEG XL: unknown to pydicom 3.0
    assert unknown is not None
    assert "1.2.840.10008.1.2.4.110" in unknown


@pytest.mark.parametrize("uid", [HEVCMP51, "1.2.840.10008.1.2.4.110"])
def test_file_with_undecodable_transfer_syntax_is_a_case_problem(tmp_path: Path, uid: str) -> None:
    written = write_series(tmp_path / "x", n_slices=2)
    declare_transfer_syntax(written.files[1], uid)
    problem = _problem(read_dicom_folder, tmp_path / "x")
    assert problem.path == str(written.files[1])
    assert uid in problem.reason
    assert "consortia[codecs]" in problem.reason


def test_missing_extra_is_named_when_its_decoder_is_not_installed() -> None:
    """In a Python where pylibjpeg cannot be imported (as without our extra), JPEG
    Lossless SV1 has no decoder and the message says what to install."""
    code = (
        "import sys\n"
        "sys.modules['pylibjpeg'] = None\n"
        "from consortia.client.data.dicom.series import missing_codec\n"
        f"print(missing_codec({str(JPEGLosslessSV1)!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "JPEG Lossless" in result.stdout
    assert str(JPEGLosslessSV1) in result.stdout
    assert 'pip install "consortia[codecs]"' in result.stdout
    assert missing_codec(JPEGLosslessSV1) is None  # here the extra is installed


# --- bad input -------------------------------------------------------------------------


def test_bundled_truncated_file_is_reported(tmp_path: Path) -> None:
    path = _bundled("MR_truncated.dcm", tmp_path / "trunc")
    problem = _problem(read_dicom_folder, tmp_path / "trunc")
    assert problem.path == str(path)
    assert "truncated" in problem.reason


def test_self_truncated_file_is_reported_and_left_alone(tmp_path: Path) -> None:
    written = write_series(tmp_path / "trunc", n_slices=3, truncate_bytes=7, truncate_index=1)
    before = written.files[1].read_bytes()
    scan = scan_dicom_folder(tmp_path / "trunc")  # headers are intact: scanning is fine
    assert scan.problems == ()
    problem = _problem(read_dicom_folder, tmp_path / "trunc")
    assert problem.path == str(written.files[1])
    assert "truncated" in problem.reason
    assert written.files[1].read_bytes() == before


def test_file_cut_inside_its_header_is_unreadable(tmp_path: Path) -> None:
    written = write_series(tmp_path / "cut", n_slices=2)
    truncate_file(written.files[0], written.files[0].stat().st_size - 300)
    scan = scan_dicom_folder(tmp_path / "cut")
    assert [p.path for p in scan.problems] == [str(written.files[0])]
    assert "truncated" in scan.problems[0].reason


def test_missing_pixel_data(tmp_path: Path) -> None:
    written = write_series(tmp_path / "nopix", n_slices=2, overrides={1: {"PixelData": None}})
    problem = _problem(read_dicom_folder, tmp_path / "nopix")
    assert problem.path == str(written.files[1])
    assert "no PixelData" in problem.reason


def test_non_dicom_file_in_folder(tmp_path: Path) -> None:
    written = write_series(tmp_path / "mixed", n_slices=2)
    (tmp_path / "mixed" / "notes.txt").write_text("not an image")
    (tmp_path / "mixed" / ".DS_Store").write_bytes(b"\0\1")  # hidden: skipped
    scan = scan_dicom_folder(tmp_path / "mixed")
    assert scan.series == ((written.series_uid, tuple(sorted(written.files))),)
    assert [(p.path, p.reason) for p in scan.problems] == [
        (str(tmp_path / "mixed" / "notes.txt"), "not a DICOM file")
    ]
    problem = _problem(read_dicom_folder, tmp_path / "mixed")
    assert problem.path == str(tmp_path / "mixed" / "notes.txt")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    problem = _problem(scan_dicom_folder, tmp_path / "empty")
    assert (problem.path, problem.reason) == (str(tmp_path / "empty"), "no DICOM files")
    _problem(read_dicom_folder, tmp_path / "empty")


def test_scan_groups_series_recursively_in_a_stable_order(tmp_path: Path) -> None:
    second = write_series(tmp_path / "case" / "b", n_slices=2, seed=2)
    first = write_series(tmp_path / "case" / "a" / "deeper", n_slices=3, seed=1)
    scan = scan_dicom_folder(tmp_path / "case")
    assert [uid for uid, _ in scan.series] == [first.series_uid, second.series_uid]
    assert scan.series[0][1] == tuple(sorted(first.files))
    problem = _problem(read_dicom_folder, tmp_path / "case")
    assert problem.path == str(tmp_path / "case")
    assert "found 2" in problem.reason


def test_inconsistent_slice_spacing(tmp_path: Path) -> None:
    positions = [(0.0, 0.0, z) for z in (0.0, 2.5, 5.0, 10.0)]  # a missing slice
    written = write_series(tmp_path / "gap", n_slices=4, positions=positions)
    problem = _problem(read_dicom_folder, tmp_path / "gap")
    assert problem.path == str(written.files[3])
    assert "inconsistent slice spacing" in problem.reason
    # within 1%: accepted
    positions = [(0.0, 0.0, z) for z in (0.0, 2.5, 5.01, 7.5)]
    write_series(tmp_path / "ok", n_slices=4, positions=positions)
    assert read_dicom_folder(tmp_path / "ok").volume.spacing[0] == pytest.approx(2.5)


def test_duplicate_positions(tmp_path: Path) -> None:
    positions = [(0.0, 0.0, z) for z in (0.0, 2.5, 2.5, 5.0)]
    write_series(tmp_path / "dup", n_slices=4, positions=positions)
    problem = _problem(read_dicom_folder, tmp_path / "dup")
    assert "same position" in problem.reason


def test_gantry_tilt_is_reported(tmp_path: Path) -> None:
    positions = [(0.0, 0.5 * i, 2.5 * i) for i in range(4)]  # steps leave the normal
    write_series(tmp_path / "tilt", n_slices=4, positions=positions)
    assert (
        "not stacked along the slice normal"
        in _problem(read_dicom_folder, tmp_path / "tilt").reason
    )


def test_mixed_rows_and_columns(tmp_path: Path) -> None:
    first = write_series(tmp_path / "mix", n_slices=2, rows=6)
    other = write_series(
        tmp_path / "mix",
        n_slices=1,
        rows=7,
        series_uid=first.series_uid,
        positions=[(-20.0, -30.0, 45.0)],
        file_names=["other.dcm"],
        seed=9,
    )
    problem = _problem(read_dicom_folder, tmp_path / "mix")
    assert "image size" in problem.reason
    assert problem.path in {str(first.files[0]), str(other.files[0])}


def test_mixed_orientation(tmp_path: Path) -> None:
    tilted = [1.0, 0.0, 0.0, 0.0, 0.9950042, 0.0998334]
    written = write_series(
        tmp_path / "orient", n_slices=3, overrides={2: {"ImageOrientationPatient": tilted}}
    )
    problem = _problem(read_dicom_folder, tmp_path / "orient")
    assert problem.path == str(written.files[2])
    assert "orientation differs" in problem.reason


def test_unexpected_modality(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", n_slices=2, modality="CT")
    assert read_dicom_folder(tmp_path / "ct", modalities={"CT", "MR"}).volume.modality == "CT"
    problem = _problem(read_dicom_folder, tmp_path / "ct", modalities={"MR"})
    assert "unexpected modality" in problem.reason
    assert "CT" not in problem.reason  # the tag value itself is not in the message


def test_series_uids_must_agree(tmp_path: Path) -> None:
    a = write_series(tmp_path / "a", n_slices=1)
    b = write_series(tmp_path / "b", n_slices=1, seed=3)
    problem = _problem(read_dicom_series, [a.files[0], b.files[0]])
    assert "2 series" in problem.reason


def test_no_patient_data_in_messages_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="consortia")
    common: dict[str, Any] = {"patient_id": SECRET_ID, "patient_name": SECRET_NAME}
    write_series(tmp_path / "good", n_slices=2, **common)
    series = read_dicom_folder(tmp_path / "good")
    assert series.patient_id == SECRET_ID  # kept locally, in the result only
    cases = [
        write_series(tmp_path / "gap", positions=[(0, 0, 0), (0, 0, 1), (0, 0, 5)], **common),
        write_series(tmp_path / "dup", positions=[(0, 0, 0), (0, 0, 0)], **common),
        write_series(tmp_path / "trunc", n_slices=2, truncate_bytes=3, **common),
    ]
    for case in cases:
        problem = _problem(read_dicom_folder, case.folder)
        assert SECRET_ID not in str(problem)
        assert "Secretname" not in str(problem)
    _problem(read_dicom_folder, tmp_path / "good", modalities={"US"})
    assert SECRET_ID not in caplog.text
    assert "Secretname" not in caplog.text
