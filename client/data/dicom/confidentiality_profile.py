"""DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile: which attributes
identify a person and what the profile does with each.

The rows of Table E.1-1 (tag and Basic Profile action code) come from `dicom-anonymizer`
(KitwareMedical), which ships a machine-readable copy of the table generated from the
standard, one module per edition; we use its edition ``2026c``. Only the table is used:
the rewriting itself (`consortia.client.data.dicom.deidentify`) is our own, because that
library applies the actions to the top level of a data set only and keeps its UID map in
a process-wide global.

On top of the table the profile's general rules are applied: every private tag is removed
(X), every Person Name (PN) attribute is emptied (Z) wherever it occurs, and dates (DA,
DT) that the table does not list are treated as X/Z, as PS3.15 E.1.1 allows for
attributes not listed that may identify. Action codes (PS3.15 E.1.1):

- ``D`` replace with a non-empty dummy value consistent with the VR
- ``Z`` replace with an empty value (or a dummy)
- ``X`` remove
- ``U`` replace with a UID that is consistent within the set of instances
- ``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D`` the first unless the next is needed for IOD
  conformance; without knowing each attribute's type in every IOD we pick the choice that
  keeps any IOD conformant (``Z/D``, ``X/D``, ``X/Z/D``: dummy; ``X/Z``: empty)
- ``X/Z/U*`` for sequences holding UID references: keep the sequence, replace the UIDs in
  it and apply the profile to everything else in it
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

__all__ = [
    "BASIC_PROFILE",
    "BASIC_PROFILE_CODE",
    "DEIDENTIFICATION_METHOD",
    "DUMMY_TEXT",
    "FILE_META_KEPT",
    "PROFILE_EDITION",
    "PSEUDONYM_PREFIX",
    "Step",
    "attribute_name",
    "dummy_value",
    "is_placeholder",
    "is_pseudonym",
    "profile_action",
    "step_for",
    "tag_text",
]

PROFILE_EDITION = "2026c"

#: DeidentificationMethod (LO, at most 64 characters) written into every copy.
DEIDENTIFICATION_METHOD = "Consortia: PS3.15 Annex E Basic Profile"
#: (CodeValue, CodingSchemeDesignator, CodeMeaning) for DeidentificationMethodCodeSequence.
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

#: File meta elements a copy keeps; the rest (source/sending AE titles, presentation
#: addresses, private information) is removed.
FILE_META_KEPT = frozenset(
    {0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013}
)

PSEUDONYM_PREFIX = "ANON-"
_PSEUDONYM = re.compile(rf"^{PSEUDONYM_PREFIX}[0-9A-F]{{16}}$")

DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BYTES = bytes(8)  # a multiple of every binary VR's unit size
_DUMMIES: dict[str, object] = {
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "UR": "https://anonymized.invalid",
    **dict.fromkeys(("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"), DUMMY_TEXT),
    **dict.fromkeys(("FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "US or SS"), 0),
    **dict.fromkeys(("OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW"), _DUMMY_BYTES),
}

_CATEGORY_ACTIONS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


class Step(StrEnum):
    """What the de-identifier does to one attribute (an action code resolved)."""

    REMOVE = "removed"
    EMPTY = "emptied"
    DUMMY = "dummy"
    REPLACE_UID = "uid_replaced"
    CLEAN = "clean"  # keep a sequence, apply the profile inside it


_STEPS = {
    "X": Step.REMOVE,
    "Z": Step.EMPTY,
    "X/Z": Step.EMPTY,
    "D": Step.DUMMY,
    "Z/D": Step.DUMMY,
    "X/D": Step.DUMMY,
    "X/Z/D": Step.DUMMY,
    "U": Step.REPLACE_UID,
    "X/Z/U*": Step.CLEAN,
}


def _load_table() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    table = dicom_anonymization_database_selector(f"dicomfields_{PROFILE_EDITION}")
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, action in _CATEGORY_ACTIONS.items():
        for row in table[category]:
            if len(row) == 2:
                exact[(row[0] << 16) | row[1]] = action
            elif len(row) == 4:  # repeating group: (group, element, group mask, element mask)
                masked.append((row[0], row[1], row[2], row[3], action))
            else:
                raise ValueError(f"unexpected Table E.1-1 row {row!r} in {category}")
    return exact, tuple(masked)


_EXACT, _MASKED = _load_table()

#: Table E.1-1, Basic Profile column: tag (as an int) -> action code.
BASIC_PROFILE: Mapping[int, str] = MappingProxyType(_EXACT)


def tag_text(tag: BaseTag) -> str:
    """A tag as "(gggg,eeee)"."""
    return f"({tag.group:04X},{tag.element:04X})"


def attribute_name(tag: BaseTag) -> str:
    """ "private" for a private tag, else the keyword (repeating groups included, e.g.
    OverlayData in group 6002), else the tag as text."""
    if tag.is_private:
        return "private"
    return keyword_for_tag(tag) or tag_text(tag)


def profile_action(tag: BaseTag, vr: str) -> str | None:
    """The Basic Profile action code for an attribute, or None where it may be kept as is
    (a kept sequence is still cleaned item by item)."""
    if tag.is_private:
        return "X"
    action = _EXACT.get(int(tag))
    if action is not None:
        return action
    for group, element, group_mask, element_mask, masked_action in _MASKED:
        if tag.group & group_mask == group and tag.element & element_mask == element:
            return masked_action
    if vr == "PN":
        return "Z"
    if vr in ("DA", "DT"):
        return "X/Z"
    return None


def step_for(action: str) -> Step:
    """How an action code is carried out (see the module docstring for the choices)."""
    try:
        return _STEPS[action]
    except KeyError:
        raise ValueError(f"unknown confidentiality profile action {action!r}") from None


def dummy_value(vr: str) -> object | None:
    """The dummy value written for action D, or None where the VR has none (e.g. AT)."""
    return _DUMMIES.get(vr)


def is_pseudonym(value: object) -> bool:
    """Whether a PatientID/PatientName value is a pseudonym written by the de-identifier."""
    return bool(_PSEUDONYM.match(str(value)))


def _one_placeholder(vr: str, value: object) -> bool:
    if value is None or value in ("", b""):
        return True
    if isinstance(value, bytes) and not value.rstrip(b"\x00 "):
        return True
    if isinstance(value, str) and not value.rstrip("\x00 "):
        return True
    dummy = _DUMMIES.get(vr)
    if isinstance(dummy, str):
        return str(value).strip() == dummy or (vr in ("LO", "PN", "SH") and is_pseudonym(value))
    return dummy is not None and value == dummy


def is_placeholder(vr: str, value: object) -> bool:
    """Whether a value is one the de-identifier writes: empty, the VR's dummy, or a
    pseudonym. Used by the guard to accept copies marked as de-identified."""
    if isinstance(value, MultiValue | list | tuple):
        return all(_one_placeholder(vr, item) for item in value)
    return _one_placeholder(vr, value)
