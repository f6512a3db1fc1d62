"""Checks on one DICOM file before its pixels are decoded: header values per frame, and
pixel data that is present, decodable and complete.

Whether a compressed transfer syntax can be decoded is asked of pydicom's decoder
registry, which knows the plugins installed here (pylibjpeg and its libjpeg, openjpeg and
rle plugins from our optional ``codecs`` extra, pillow, pyjpegls). Messages name the file
and the transfer syntax, never a tag value that could identify a patient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ImplicitVRLittleEndian

from consortia.client.data.formats.volume import CaseProblem

__all__ = [
    "CODECS_HINT",
    "FrameHeader",
    "check_pixel_data",
    "first_present",
    "frame_headers",
    "header_number",
    "missing_codec",
    "transfer_syntax",
    "ts_label",
]

CODECS_HINT = 'pip install "consortia[codecs]"'
"""How to install the optional decoders (JPEG, JPEG-LS, JPEG 2000, RLE)."""


def ts_label(uid: str) -> str:
    """``'Name (UID)'`` for a transfer syntax, or ``'unknown transfer syntax UID'``."""
    syntax = UID(uid)
    if syntax.is_transfer_syntax:
        return f"{syntax.name} ({syntax})"
    return f"unknown transfer syntax {syntax}"


def missing_codec(transfer_syntax_uid: str) -> str | None:
    """None when pixel data in this transfer syntax can be decoded here, else a message
    naming the syntax and what to install."""
    syntax = UID(transfer_syntax_uid)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return (
            f"{ts_label(syntax)} cannot be decoded: no decoder exists for it in pydicom, "
            f"even with the optional decoders ({CODECS_HINT}); convert the files to an "
            "uncompressed, JPEG, JPEG-LS, JPEG 2000 or RLE transfer syntax"
        )
    if decoder.is_available:
        return None
    missing = "; ".join(decoder.missing_dependencies)
    return (
        f"no decoder for {ts_label(syntax)} is installed; install the optional decoders with "
        f"{CODECS_HINT}" + (f" (pydicom plugins: {missing})" if missing else "")
    )


def transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax (from its file meta information, else as pydicom read it)."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid))
    implicit, little = ds.original_encoding
    if implicit and little:
        return ImplicitVRLittleEndian
    return UID("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")


def _positive_int(ds: Dataset, keyword: str, default: int | None, path: Path) -> int:
    value = ds.get(keyword)
    if (value is None or value == "") and default is not None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise CaseProblem(str(path), f"{keyword} is missing or invalid")
    return number


def check_pixel_data(ds: Dataset, path: Path) -> UID:
    """Raise CaseProblem(path, ...) unless ``ds`` has pixel data that can be decoded here and,
    for an uncompressed transfer syntax, is as long as its image attributes say.

    pydicom reads a file whose pixel data was cut short without complaint; the length is
    compared here with Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated/8.
    Returns the transfer syntax.
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise CaseProblem(str(path), "float pixel data is not supported")
        raise CaseProblem(str(path), "no PixelData: the file is not an image")
    syntax = transfer_syntax(ds)
    problem = missing_codec(syntax)
    if problem is not None:
        raise CaseProblem(str(path), problem)
    if syntax.is_encapsulated:
        return syntax
    bits = math.prod(
        _positive_int(ds, keyword, default, path)
        for keyword, default in (
            ("Rows", None),
            ("Columns", None),
            ("NumberOfFrames", 1),
            ("SamplesPerPixel", 1),
            ("BitsAllocated", None),
        )
    )
    expected = math.ceil(bits / 8)
    actual = len(ds.PixelData)
    if actual < expected:
        raise CaseProblem(
            str(path),
            f"pixel data is truncated: {actual} of {expected} bytes "
            "(the file may have been cut short while copying)",
        )
    return syntax


def _floats(value: Any, count: int, keyword: str, path: Path) -> np.ndarray | None:
    if value is None or value == "":
        return None
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        numbers = np.array([])
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise CaseProblem(str(path), f"{keyword} is invalid")
    return numbers


def header_number(value: Any, keyword: str, path: Path) -> float | None:
    """A header value as a finite float, None when absent; CaseProblem when invalid."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise CaseProblem(str(path), f"{keyword} is invalid")
    return number


def first_present(*values: Any) -> Any:
    """The first value that is present (not None and not empty)."""
    for value in values:
        if value is not None and value != "":
            return value
    return None


def _group_value(groups: Sequence[Dataset | None], sequence: str, keyword: str) -> Any:
    """``keyword`` from the first item of ``sequence`` in the first group that has it."""
    for group in groups:
        if group is not None and sequence in group and len(group[sequence].value) > 0:
            value = group[sequence].value[0].get(keyword)
            if value is not None and value != "":
                return value
    return None


@dataclass(frozen=True)
class FrameHeader:
    """Header facts about one frame (the whole file for a single-frame file): position,
    orientation and pixel spacing (None when absent), rescale, and an InstanceNumber (or
    frame index in a multi-frame file) to order frames by when positions are absent."""

    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    order_key: int | None


def _group_number(
    ds: Dataset, groups: Sequence[Dataset | None], sequence: str, keyword: str, path: Path
) -> float | None:
    """``keyword`` as a number, from the frame's functional groups, else the top level."""
    return header_number(
        first_present(_group_value(groups, sequence, keyword), ds.get(keyword)), keyword, path
    )


def _frame_position(
    ds: Dataset,
    path: Path,
    groups: Sequence[Dataset | None],
    frame: tuple[int, int],
    orientation: np.ndarray | None,
    steps: tuple[np.ndarray | None, float | None],
) -> np.ndarray | None:
    """ImagePositionPatient of frame ``k`` of ``count`` (``frame``): its own, else the
    top-level one, moved along the normal by the frame's offset in a legacy multi-frame
    file (``steps``: GridFrameOffsetVector, SpacingBetweenSlices)."""
    k, count = frame
    offsets, between = steps
    position = _floats(
        _group_value(groups, "PlanePositionSequence", "ImagePositionPatient"),
        3,
        "ImagePositionPatient",
        path,
    )
    top = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", path)
    if position is None and top is not None:
        if count == 1:
            position = top
        elif orientation is not None and (offsets is not None or between is not None):
            normal = np.cross(orientation[:3], orientation[3:])
            length = float(np.linalg.norm(normal))
            step = offsets[k] if offsets is not None else k * (between or 0.0)
            if length > 1e-6:  # else the orientation is reported as invalid later
                position = top + step * normal / length
    return position


def _frame_header(
    ds: Dataset,
    path: Path,
    groups: Sequence[Dataset | None],
    frame: tuple[int, int],
    steps: tuple[np.ndarray | None, float | None],
) -> FrameHeader:
    """The header of frame ``k`` of ``count`` (``frame``), whose functional groups are
    ``groups`` (per-frame first, then shared)."""
    k, count = frame
    orientation = _floats(
        first_present(
            _group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient"),
            ds.get("ImageOrientationPatient"),
        ),
        6,
        "ImageOrientationPatient",
        path,
    )
    spacing = _floats(
        first_present(
            _group_value(groups, "PixelMeasuresSequence", "PixelSpacing"),
            ds.get("PixelSpacing"),
            ds.get("ImagerPixelSpacing"),
        ),
        2,
        "PixelSpacing",
        path,
    )
    position = _frame_position(ds, path, groups, frame, orientation, steps)
    transformation = "PixelValueTransformationSequence"
    slope = _group_number(ds, groups, transformation, "RescaleSlope", path)
    intercept = _group_number(ds, groups, transformation, "RescaleIntercept", path)
    number = header_number(ds.get("InstanceNumber"), "InstanceNumber", path) if count == 1 else k
    return FrameHeader(
        position=position,
        orientation=orientation,
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing is not None else None,
        slope=1.0 if slope is None else slope,
        intercept=0.0 if intercept is None else intercept,
        order_key=None if number is None else int(number),
    )


def frame_headers(ds: Dataset, path: Path) -> list[FrameHeader]:
    """The frames of one file with their geometry, from the per-frame or shared functional
    groups where present, else the top-level attributes (GridFrameOffsetVector or
    SpacingBetweenSlices give positions to the frames of a legacy multi-frame file).
    Invalid values raise CaseProblem(path, "KEYWORD is invalid")."""
    count = int(header_number(ds.get("NumberOfFrames"), "NumberOfFrames", path) or 1)
    shared = (
        ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    )
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if per_frame and len(per_frame) != count:
        raise CaseProblem(
            str(path), f"{len(per_frame)} per-frame functional groups for {count} frames"
        )
    offsets = _floats(ds.get("GridFrameOffsetVector"), count, "GridFrameOffsetVector", path)
    between = _group_number(ds, [shared], "PixelMeasuresSequence", "SpacingBetweenSlices", path)
    return [
        _frame_header(
            ds, path, [per_frame[k] if per_frame else None, shared], (k, count), (offsets, between)
        )
        for k in range(count)
    ]
