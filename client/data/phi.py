"""PHI guard: find identifying DICOM attributes before a node trains on a data set.

The guard walks the whole header, the file meta information and every item of every
sequence at any depth, and reports each attribute that PS3.15 Annex E's Basic Application
Level Confidentiality Profile would remove or replace and that holds a value (see
`consortia.client.data.confidentiality_profile` for the table and the extra rules: all
private tags, all Person Names, all dates). A finding names the tag, the keyword, where it
is and the profile's action, never the value, so findings may be shown and logged.
BurnedInAnnotation YES is a finding too (action C): the identifiers are in the pixels,
which only the Clean Pixel Data Option would remove.

A file marked as de-identified (PatientIdentityRemoved YES plus a de-identification
method) only fails the guard where it still holds values the profile does not allow: a
private tag, anything the profile removes, burned-in annotation, or a value that is
neither empty, nor a dummy, nor a pseudonym written by `consortia.client.data.deidentify`.
Replaced UIDs cannot be told from original ones, so a marked file's UIDs are trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from consortia.client.data.confidentiality_profile import (
    FILE_META_KEPT,
    Step,
    attribute_name,
    is_placeholder,
    profile_action,
    step_for,
    tag_text,
)
from consortia.client.data.volume import CaseProblem

__all__ = ["PhiFinding", "find_identifiers", "guard_dataset", "guard_file", "is_deidentified"]

_log = logging.getLogger("consortia.client.data.phi")
_BURNED_IN = 0x00280301


@dataclass(frozen=True)
class PhiFinding:
    """One identifying attribute: where it is and what the profile does with it."""

    tag: str  # "(0010,0010)"; private tags too
    keyword: str  # "PatientName", or "private" for private tags
    location: str  # path through sequences, e.g. "RequestAttributesSequence[0].AccessionNumber"
    action: str  # the Basic Profile action code, e.g. "Z", "X", "D", "U", "X/Z/D"


def _walk(ds: Dataset, prefix: str) -> Iterator[tuple[PhiFinding, DataElement]]:
    for tag in list(ds.keys()):
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


def _all(ds: Dataset) -> Iterator[tuple[PhiFinding, DataElement]]:
    yield from _walk_file_meta(ds)
    yield from _walk(ds, "")
    burned = ds.get(_BURNED_IN)
    if burned is not None and str(burned.value or "").strip().upper() == "YES":
        # identifiers in the pixels, which only the Clean Pixel Data Option (C) removes
        yield (
            PhiFinding(tag_text(burned.tag), "BurnedInAnnotation", "BurnedInAnnotation", "C"),
            burned,
        )


def find_identifiers(ds: Dataset) -> list[PhiFinding]:
    """Every identifying attribute present with a non-empty value, at any depth."""
    return [finding for finding, _ in _all(ds)]


def is_deidentified(ds: Dataset) -> bool:
    """PatientIdentityRemoved is YES and a de-identification method is recorded."""
    removed = str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() == "YES"
    method = ds.get("DeidentificationMethod")
    codes = ds.get("DeidentificationMethodCodeSequence")
    return removed and (bool(method) or bool(codes))


def _allowed_in_marked_copy(finding: PhiFinding, elem: DataElement) -> bool:
    if finding.keyword == "private" or finding.action in ("X", "C"):
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
    """`guard_dataset` on a file's header (read up to the pixel data, which is not read).

    Attributes stored after the pixel data (e.g. trailing padding, digital signatures) are
    not seen; `deidentify_tree` reads whole files and removes them.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # pydicom raises many kinds on damaged files
        _log.debug("cannot read %s as DICOM (%s)", path, type(err).__name__)
        raise CaseProblem(str(path), f"not a readable DICOM file ({type(err).__name__})") from None
    return guard_dataset(ds)
