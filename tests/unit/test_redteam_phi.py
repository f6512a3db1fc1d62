"""Red-team F15 (issue 19): the PHI guard read DICOM headers with `stop_before_pixels`.

Each attack below takes a real file bundled with pydicom, de-identifies it with our own
de-identifier (so it is marked de-identified and passes the guard), then hides an
identifier where the old guard did not look, writes it to disk and runs `guard_file`:
a private tag stored after PixelData, RecognizableVisualFeatures YES, and an overlay
drawn into the unused high bits of the pixel data (described by an overlay plane, or not
described at all).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from consortia.client.data.dicom.deidentify import UidMap, deidentify_dataset
from consortia.client.data.dicom.phi import guard_file

SECRET = "PLANTNAME^HIDDEN"


def _marked_ct() -> Dataset:
    """CT_small.dcm de-identified by our own de-identifier (guard_file passes it)."""
    found = get_testdata_file("CT_small.dcm")
    if not isinstance(found, str):
        raise RuntimeError("pydicom's bundled CT_small.dcm is missing")
    ds = pydicom.dcmread(found)
    deidentify_dataset(ds, UidMap())
    return ds


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _twelve_bit(ds: Dataset) -> Dataset:
    """The same image stored as unsigned 12 bits in 16 (high 4 bits unused, zero)."""
    pixels = ds.pixel_array.astype(np.int32)
    pixels = np.clip(pixels - pixels.min(), 0, 4095).astype(np.uint16)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    ds.PixelData = pixels.tobytes()
    return ds


def _burn_overlay(ds: Dataset, bit: int) -> Dataset:
    """Draw a filled box (as an overlay would draw text) into bit `bit` of the pixels."""
    pixels = np.frombuffer(ds.PixelData, dtype="<u2").reshape(ds.Rows, ds.Columns).copy()
    pixels[10:20, 5:60] |= np.uint16(1 << bit)
    ds.PixelData = pixels.tobytes()
    return ds


def test_control_our_marked_copy_passes_from_disk(tmp_path: Path) -> None:
    assert guard_file(_write(_marked_ct(), tmp_path / "copy.dcm")) == []
    assert guard_file(_write(_twelve_bit(_marked_ct()), tmp_path / "twelve.dcm")) == []


def test_f15_a_private_tag_after_pixel_data_is_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _marked_ct()
    block = ds.private_block(0x7FE1, "SIEMENS CSA NON-IMAGE", create=True)
    block.add_new(0x10, "LO", SECRET)
    path = _write(ds, tmp_path / "trailing_private.dcm")
    # on disk the private block really follows the pixel data
    raw = path.read_bytes()
    assert raw.index(SECRET.encode()) > raw.index(b"\xe0\x7f\x10\x00")
    caplog.set_level(logging.DEBUG)
    findings = guard_file(path)
    assert {(f.tag, f.keyword) for f in findings} >= {("(7FE1,1010)", "private")}
    assert SECRET not in repr(findings)
    assert SECRET not in caplog.text


def test_f15_a_large_private_value_after_pixel_data_is_found(tmp_path: Path) -> None:
    ds = _marked_ct()
    block = ds.private_block(0x7FE1, "SIEMENS CSA NON-IMAGE", create=True)
    block.add_new(0x20, "OB", (SECRET.encode() + b" ") * 20000)  # bigger than the defer size
    findings = guard_file(_write(ds, tmp_path / "large_private.dcm"))
    assert ("(7FE1,1020)", "private") in {(f.tag, f.keyword) for f in findings}


def test_f15_recognizable_visual_features_yes_is_a_finding(tmp_path: Path) -> None:
    ds = _marked_ct()
    ds.RecognizableVisualFeatures = "YES"
    findings = guard_file(_write(ds, tmp_path / "face.dcm"))
    assert [(f.tag, f.keyword, f.action) for f in findings] == [
        ("(0028,0302)", "RecognizableVisualFeatures", "C")
    ]
    ds.RecognizableVisualFeatures = "NO"
    assert guard_file(_write(ds, tmp_path / "no_face.dcm")) == []


def test_f15_an_overlay_plane_in_the_pixel_data_is_a_finding(tmp_path: Path) -> None:
    ds = _burn_overlay(_twelve_bit(_marked_ct()), 15)
    # the retired way: an overlay plane whose bits live in PixelData (no OverlayData)
    ds.add_new(0x60000010, "US", ds.Rows)  # OverlayRows
    ds.add_new(0x60000011, "US", ds.Columns)  # OverlayColumns
    ds.add_new(0x60000040, "CS", "G")  # OverlayType
    ds.add_new(0x60000050, "SS", [1, 1])  # OverlayOrigin
    ds.add_new(0x60000100, "US", 16)  # OverlayBitsAllocated
    ds.add_new(0x60000102, "US", 15)  # OverlayBitPosition
    findings = guard_file(_write(ds, tmp_path / "overlay_plane.dcm"))
    assert {(f.tag, f.action) for f in findings} >= {("(6000,0102)", "C")}


def test_f15_undeclared_bits_above_high_bit_are_a_finding(tmp_path: Path) -> None:
    ds = _burn_overlay(_twelve_bit(_marked_ct()), 14)
    findings = guard_file(_write(ds, tmp_path / "hidden_bits.dcm"))
    assert [(f.tag, f.keyword, f.action) for f in findings] == [("(7FE0,0010)", "PixelData", "C")]


def test_f15_overlay_data_is_a_finding_in_a_marked_copy(tmp_path: Path) -> None:
    """(60xx,3000) OverlayData: judged before the fix too (the profile removes it)."""
    ds = _marked_ct()
    ds.add_new(0x60003000, "OW", bytes(64 * 64 // 8))
    ds.add_new(0x60000010, "US", 64)
    ds.add_new(0x60000011, "US", 64)
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    findings = guard_file(_write(ds, tmp_path / "overlay_data.dcm"))
    assert {(f.tag, f.keyword) for f in findings} == {("(6000,3000)", "OverlayData")}


def test_f15_signed_pixels_may_only_sign_extend_above_high_bit(tmp_path: Path) -> None:
    ds = _marked_ct()  # signed 16 bits
    pixels = np.clip(ds.pixel_array.astype(np.int32), -2048, 2047).astype(np.int16)
    ds.BitsStored, ds.HighBit = 12, 11
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    ds.PixelData = pixels.tobytes()  # negative values sign-extended: allowed
    assert guard_file(_write(ds, tmp_path / "signed.dcm")) == []
    raw = pixels.view(np.uint16).copy()
    box = raw[10:20, 5:60]
    box[(box & 0x0800) == 0] |= np.uint16(0xF000)  # all high bits on positive pixels
    ds.PixelData = raw.tobytes()
    findings = guard_file(_write(ds, tmp_path / "signed_hidden.dcm"))
    assert [(f.tag, f.action) for f in findings] == [("(7FE0,0010)", "C")]
