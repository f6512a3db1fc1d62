"""PHI guard: find identifying DICOM attributes before a node trains on a data set.

The guard walks the whole header, the file meta information and every item of every
sequence at any depth, and reports each attribute that PS3.15 Annex E's Basic Application
Level Confidentiality Profile would remove or replace and that holds a value (see
`consortia.client.data.dicom.confidentiality_profile` for the table and the extra rules: all
private tags, all Person Names, all dates). A finding names the tag, the keyword, where it
is and the profile's action, never the value, so findings may be shown and logged.
Findings whose identifiers would be in the pixels, which only the Clean Pixel Data
Option removes (action C, never allowed in a marked copy): BurnedInAnnotation YES,
RecognizableVisualFeatures YES, an overlay plane stored in the pixel data (60xx,0100
OverlayBitsAllocated above 1 or 60xx,0102 OverlayBitPosition above 0, the retired way of
storing overlays), and, in an uncompressed file, any pixel with bits set above HighBit
(what such an overlay leaves when its plane description was removed). Overlay planes of
their own (60xx,3000 OverlayData) are removed by the profile (action X) like any other
attribute.

`guard_file` reads the whole file, the elements after the pixel data included (private
tags there, e.g. (7FE1,xxxx), are findings like any other), with large values deferred:
the pixel data is never loaded whole, only scanned in chunks for bits above HighBit.

A file marked as de-identified (PatientIdentityRemoved YES plus a de-identification
method) only fails the guard where it still holds values the profile does not allow: a
private tag, anything the profile removes, burned-in annotation, or a value that is
neither empty, nor a dummy, nor a pseudonym written by `consortia.client.data.dicom.deidentify`.
Replaced UIDs cannot be told from original ones, so a marked file's UIDs are trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from consortia.client.data.dicom.checks import transfer_syntax
from consortia.client.data.dicom.confidentiality_profile import (
    FILE_META_KEPT,
    Step,
    attribute_name,
    is_placeholder,
    profile_action,
    step_for,
    tag_text,
)
from consortia.client.data.formats.volume import CaseProblem

__all__ = ["PhiFinding", "find_identifiers", "guard_dataset", "guard_file", "is_deidentified"]

_log = logging.getLogger("consortia.client.data.dicom.phi")
_BURNED_IN = 0x00280301
_RECOGNIZABLE = 0x00280302
_PIXEL_DATA = 0x7FE00010
# PixelData, FloatPixelData, DoubleFloatPixelData: the image itself, judged by
# `_pixel_findings`, never loaded by the walk.
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, _PIXEL_DATA})
_OVERLAY_GROUPS = range(0x6000, 0x6020, 2)
# Values larger than this are read from the file only when looked at.
_DEFER_SIZE = "64 KB"
_CHUNK_BYTES = 1 << 22


@dataclass(frozen=True)
class PhiFinding:
    """One identifying attribute: where it is and what the profile does with it."""

    tag: str  # "(0010,0010)"; private tags too
    keyword: str  # "PatientName", or "private" for private tags
    location: str  # path through sequences, e.g. "RequestAttributesSequence[0].AccessionNumber"
    action: str  # the Basic Profile action code, e.g. "Z", "X", "D", "U", "X/Z/D"


def _walk(ds: Dataset, prefix: str) -> Iterator[tuple[PhiFinding, DataElement | None]]:
    for tag in list(ds.keys()):
        if int(tag) in _PIXEL_TAGS:
            continue  # the image: `_pixel_findings`
        raw = ds.get_item(tag, keep_deferred=True)
        if tag.is_private and isinstance(raw, RawDataElement) and raw.value is None:
            # a large private value not yet read: its length is enough, don't load it
            if raw.length:
                tag_str = tag_text(Tag(tag))
                yield PhiFinding(tag_str, "private", f"{prefix}{tag_str}", "X"), None
            continue
        elem = ds[tag]
        tag_str = tag_text(elem.tag)
        if elem.tag.is_private:  # removed as a whole, items and all
            if not elem.is_empty:
                yield PhiFinding(tag_str, "private", f"{prefix}{tag_str}", "X"), elem
            continue
        name = attribute_name(elem.tag)
        location = f"{prefix}{name}"
        action = profile_action(elem.tag, elem.VR)
        if action is not None and not elem.is_empty:
            yield PhiFinding(tag_str, name, location, action), elem
        if elem.VR == "SQ" and elem.value is not None:
            for index, item in enumerate(elem.value):
                yield from _walk(item, f"{location}[{index}].")


def _walk_file_meta(ds: Dataset) -> Iterator[tuple[PhiFinding, DataElement]]:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for tag in list(meta.keys()):
        elem = meta[tag]
        if elem.is_empty:
            continue
        action = profile_action(elem.tag, elem.VR)
        if action is None and int(elem.tag) not in FILE_META_KEPT:
            action = "X"
        if action is not None:
            name = attribute_name(elem.tag)
            yield PhiFinding(tag_text(elem.tag), name, f"file_meta.{name}", action), elem


def _number(ds: Dataset, tag: int) -> int | None:
    value = ds.get(tag)
    try:
        return None if value is None or value.value is None else int(value.value)
    except (TypeError, ValueError):
        return None


def _pixel_chunks(ds: Dataset) -> Iterator[bytes]:
    """The raw PixelData bytes in chunks, read from the file when their reading was
    deferred (never the whole pixel data at once then)."""
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None and ds.filename:
        with open(str(ds.filename), "rb") as handle:
            handle.seek(raw.value_tell)
            left = raw.length
            while left > 0:
                chunk = handle.read(min(left, _CHUNK_BYTES))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
        return
    value = ds.PixelData
    for start in range(0, len(value), _CHUNK_BYTES):
        yield value[start : start + _CHUNK_BYTES]


def _bits_above_high_bit(ds: Dataset) -> bool:
    """Whether an uncompressed image has pixels with bits set above HighBit (an overlay
    or anything else hidden where no pixel value is; for signed pixels a sign extension
    of a negative value is allowed). Encapsulated (compressed) pixel data is not decoded here."""
    if _PIXEL_DATA not in ds:
        return False
    allocated = _number(ds, 0x00280100)
    stored = _number(ds, 0x00280101)
    if allocated not in (8, 16, 32) or stored is None or not 0 < stored < allocated:
        return False
    high_bit = _number(ds, 0x00280102)
    if high_bit is None or not stored - 1 <= high_bit < allocated - 1:
        high_bit = stored - 1
    syntax = transfer_syntax(ds)
    if not syntax.is_transfer_syntax or syntax.is_encapsulated:
        return False  # unknown (not decodable here) or compressed
    size = allocated // 8
    dtype = np.dtype(f"{'<' if syntax.is_little_endian else '>'}u{size}")
    full = (1 << allocated) - 1
    high = full & ~((1 << (high_bit + 1)) - 1)
    signed = _number(ds, 0x00280103) == 1
    carry = b""
    for chunk in _pixel_chunks(ds):
        data = carry + chunk
        usable = len(data) - len(data) % size
        carry = data[usable:]
        top = np.frombuffer(data[:usable], dtype=dtype) & dtype.type(high)
        bad = top != 0
        if signed:  # a sign extension: all of them set, and only on a negative value
            values = np.frombuffer(data[:usable], dtype=dtype)
            negative = (values >> dtype.type(high_bit)) & dtype.type(1) == 1
            bad &= ~((top == dtype.type(high)) & negative)
        if bool(np.any(bad)):
            return True
    return False


def _pixel_findings(ds: Dataset) -> Iterator[tuple[PhiFinding, DataElement | None]]:
    """Identifiers that would be in the pixels, which only the Clean Pixel Data Option
    (action C) removes."""
    for tag, keyword in (
        (_BURNED_IN, "BurnedInAnnotation"),
        (_RECOGNIZABLE, "RecognizableVisualFeatures"),
    ):
        elem = ds.get(tag)
        if elem is not None and str(elem.value or "").strip().upper() == "YES":
            yield PhiFinding(tag_text(elem.tag), keyword, keyword, "C"), elem
    for group in _OVERLAY_GROUPS:
        bits = _number(ds, (group << 16) | 0x0100)
        position = _number(ds, (group << 16) | 0x0102)
        if (bits is not None and bits > 1) or (position is not None and position > 0):
            tag = Tag(group, 0x0102 if position is not None else 0x0100)
            name = attribute_name(tag)
            yield PhiFinding(tag_text(tag), name, f"{name} (overlay in the pixel data)", "C"), None
    if _bits_above_high_bit(ds):
        tag = Tag(_PIXEL_DATA)
        yield PhiFinding(tag_text(tag), "PixelData", "PixelData (bits above HighBit)", "C"), None


def _all(ds: Dataset) -> Iterator[tuple[PhiFinding, DataElement | None]]:
    yield from _walk_file_meta(ds)
    yield from _walk(ds, "")
    yield from _pixel_findings(ds)


def find_identifiers(ds: Dataset) -> list[PhiFinding]:
    """Every identifying attribute present with a non-empty value, at any depth."""
    return [finding for finding, _ in _all(ds)]


def is_deidentified(ds: Dataset) -> bool:
    """PatientIdentityRemoved is YES and a de-identification method is recorded."""
    removed = str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() == "YES"
    method = ds.get("DeidentificationMethod")
    codes = ds.get("DeidentificationMethodCodeSequence")
    return removed and (bool(method) or bool(codes))


def _allowed_in_marked_copy(finding: PhiFinding, elem: DataElement | None) -> bool:
    if elem is None or finding.keyword == "private" or finding.action in ("X", "C"):
        return False
    step = step_for(finding.action)
    if elem.VR == "SQ":
        # an emptied sequence must be empty; the others are judged item by item
        return step is not Step.EMPTY
    if elem.VR == "UI":
        return True  # a replaced UID looks like any other UID
    return is_placeholder(elem.VR, elem.value)


def guard_dataset(ds: Dataset) -> list[PhiFinding]:
    """What blocks training on this data set.

    For a file not marked de-identified: every finding. For a marked file: only the
    findings whose values the profile does not allow (so our own copies pass and a file
    that claims YES but still holds, e.g., a real PatientName does not).
    """
    if not is_deidentified(ds):
        return find_identifiers(ds)
    return [finding for finding, elem in _all(ds) if not _allowed_in_marked_copy(finding, elem)]


def guard_file(path: Path) -> list[PhiFinding]:
    """`guard_dataset` on a whole file: every element, those after the pixel data too.

    Values over 64 KB are deferred: a large private value counts by its length, the
    pixel data is scanned in chunks (bits above HighBit) and never held whole. A deflated
    file is inflated in memory (pydicom cannot defer from it). A file that cannot be read
    whole (e.g. cut short) is judged on its header up to the pixel data; such a file is
    refused by the image reader anyway.
    """
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
        if transfer_syntax(ds) == DeflatedExplicitVRLittleEndian:
            ds = pydicom.dcmread(path)
    except Exception as whole:  # pydicom raises many kinds on damaged files
        # judge what can be read; the image reader refuses a file it cannot read whole
        _log.debug("%s cannot be read whole (%s); judging its header", path, type(whole).__name__)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:
            _log.debug("cannot read %s as DICOM (%s)", path, type(err).__name__)
            raise CaseProblem(
                str(path), f"not a readable DICOM file ({type(err).__name__})"
            ) from None
    return guard_dataset(ds)
