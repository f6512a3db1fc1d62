"""Write a de-identified copy of a DICOM folder (PS3.15 Annex E Basic Profile).

`deidentify_tree(src, dst)` reads every file under ``src`` and writes, at the same relative
path under ``dst``, a copy in which every attribute of Table E.1-1 (at any depth in
sequences), every private tag, every Person Name and every date is removed, emptied or
given a dummy value as the profile says (see
`consortia.client.data.dicom.confidentiality_profile`), and every instance UID is replaced by a
new one, consistently across the whole job, so that the copies of one series share one new
SeriesInstanceUID and references (e.g. a SEG's source images) still resolve.
PatientID and PatientName become one pseudonym per original patient ("ANON-" and a keyed
hash with a key drawn for this job): patients stay apart for per-patient splits but cannot
be linked back to the original IDs. Each copy is marked (PatientIdentityRemoved YES,
DeidentificationMethod, DeidentificationMethodCodeSequence 113100 DCM), its file meta is
reduced to the required elements, and its 128-byte preamble is zeroed.

Pixel data is copied as is: pixel scrubbing is out of scope, so a file whose
BurnedInAnnotation is YES is reported as a problem and not copied. Files that are not
DICOM, cannot be read, or are DICOMDIR indexes are reported and not copied either (they
may hold identifiers). Folder and file names are kept as they are. ``src`` is only read;
the copy is written into a temporary sibling folder that is renamed to ``dst`` only when
complete, so an interrupted job never leaves a ``dst`` that looks finished.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import MediaStorageDirectoryStorage, generate_uid

from consortia.client.data.dicom.confidentiality_profile import (
    BASIC_PROFILE_CODE,
    DEIDENTIFICATION_METHOD,
    FILE_META_KEPT,
    PSEUDONYM_PREFIX,
    Step,
    attribute_name,
    dummy_value,
    profile_action,
    step_for,
)
from consortia.client.data.formats.volume import CaseProblem
from consortia.common.errors import DataError

__all__ = ["DeidentifyReport", "UidMap", "deidentify_dataset", "deidentify_tree"]

_log = logging.getLogger("consortia.client.data.dicom.deidentify")

_CHANGE_KINDS = ("removed", "emptied", "dummy", "uid_replaced", "private_removed", "pseudonymised")
_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020


class UidMap:
    """The consistent replacements of one de-identification job.

    ``map(uid)`` gives each original UID one new UID (from `pydicom.uid.generate_uid`,
    random, unrelated to the original); ``pseudonym(patient)`` gives each original patient
    one "ANON-" pseudonym, an HMAC of the patient's ID under a key drawn for this job, so
    pseudonyms are stable within the job and unlinkable to the ID without the key, which
    is never stored.
    """

    def __init__(self) -> None:
        self._uids: dict[str, str] = {}
        self._key = secrets.token_bytes(32)

    def map(self, uid: str) -> str:
        """The new UID for ``uid`` (the same one every time within this job)."""
        original = str(uid).rstrip("\x00 ")
        if not original:
            return original
        new = self._uids.get(original)
        if new is None:
            new = self._uids[original] = str(generate_uid())
        return new

    def pseudonym(self, patient: str) -> str:
        """The pseudonym for one original patient identifier."""
        digest = hmac.new(self._key, patient.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return PSEUDONYM_PREFIX + digest.hexdigest()[:16].upper()

    def __len__(self) -> int:
        return len(self._uids)


@dataclass(frozen=True)
class DeidentifyReport:
    """What `deidentify_tree` did: counts only, never values."""

    files_written: int
    problems: tuple[CaseProblem, ...]  # files left out (not DICOM, unreadable) with reasons
    changes: dict[str, int]  # {"removed": n, "emptied": n, "dummy": n, ...} summed over files
    per_keyword: dict[str, int]  # how many times each keyword (or "private") was changed


@dataclass
class _Tally:
    changes: Counter[str] = field(default_factory=Counter)
    per_keyword: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, keyword: str) -> None:
        self.changes[kind] += 1
        self.per_keyword[keyword] += 1


def _name(elem: DataElement) -> str:
    return attribute_name(elem.tag)


def _replace_uids(elem: DataElement, uids: UidMap, tally: _Tally) -> None:
    if elem.is_empty:
        return
    if isinstance(elem.value, MultiValue | list):
        elem.value = [uids.map(value) for value in elem.value]
    else:
        elem.value = uids.map(elem.value)
    tally.add(Step.REPLACE_UID.value, _name(elem))


def _set_dummy(ds: Dataset, elem: DataElement, uids: UidMap, tally: _Tally) -> None:
    if elem.VR == "UI":
        _replace_uids(elem, uids, tally)
        return
    value = dummy_value(elem.VR)
    if value is None:
        del ds[elem.tag]
        tally.add(Step.REMOVE.value, _name(elem))
    elif elem.is_empty or elem.value != value:
        elem.value = value
        tally.add(Step.DUMMY.value, _name(elem))


def _apply(
    ds: Dataset, elem: DataElement, step: Step, uids: UidMap, tally: _Tally, *, dummies: bool
) -> None:
    if step is Step.REMOVE:
        del ds[elem.tag]
        tally.add(Step.REMOVE.value, _name(elem))
    elif step is Step.EMPTY:
        if not elem.is_empty:
            elem.value = None
            tally.add(Step.EMPTY.value, _name(elem))
    elif elem.VR == "SQ":
        # D: keep the sequence, with dummies in it; U / X/Z/U*: keep it, cleaned
        for item in elem.value:
            _clean(item, uids, tally, dummies=dummies or step is Step.DUMMY)
    elif step is Step.DUMMY:
        _set_dummy(ds, elem, uids, tally)
    elif elem.VR == "UI":
        _replace_uids(elem, uids, tally)
    elif step is Step.REPLACE_UID:  # a UID attribute with an unexpected VR
        del ds[elem.tag]
        tally.add(Step.REMOVE.value, _name(elem))
    elif not elem.is_empty:  # X/Z/U* on something that is neither a sequence nor a UID
        elem.value = None
        tally.add(Step.EMPTY.value, _name(elem))


def _clean(
    ds: Dataset,
    uids: UidMap,
    tally: _Tally,
    *,
    dummies: bool = False,
    pseudonym: str | None = None,
) -> None:
    """Apply the profile to one data set or sequence item, recursively. With ``dummies``
    (inside a sequence whose action is D) attributes that the profile would keep get dummy
    values too, except UIDs, which are kept or replaced as the profile says."""
    for tag in list(ds.keys()):
        elem = ds[tag]
        if elem.tag.is_private:
            del ds[tag]
            tally.add("private_removed", "private")
            continue
        if elem.tag.element == 0:  # retired group length: stale once anything is removed
            del ds[tag]
            continue
        if pseudonym is not None and int(elem.tag) in (_PATIENT_NAME, _PATIENT_ID):
            if elem.value != pseudonym:
                elem.value = pseudonym
                tally.add("pseudonymised", _name(elem))
            continue
        action = profile_action(elem.tag, elem.VR)
        if action is not None:
            _apply(ds, elem, step_for(action), uids, tally, dummies=dummies)
        elif elem.VR == "SQ":
            for item in elem.value:
                _clean(item, uids, tally, dummies=dummies)
        elif dummies and elem.VR != "UI" and not elem.is_empty:
            _set_dummy(ds, elem, uids, tally)


def _patient_key(ds: Dataset) -> str:
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return f"{keyword}:{value}"
    return ""


def _clean_file_meta(ds: Dataset, uids: UidMap, tally: _Tally) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for tag in list(meta.keys()):
        if int(tag) not in FILE_META_KEPT:
            tally.add(Step.REMOVE.value, _name(meta[tag]))
            del meta[tag]
    if "SOPInstanceUID" in ds:
        if meta.get("MediaStorageSOPInstanceUID") != ds.SOPInstanceUID:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            tally.add(Step.REPLACE_UID.value, "MediaStorageSOPInstanceUID")
    elif "MediaStorageSOPInstanceUID" in meta:
        _replace_uids(meta["MediaStorageSOPInstanceUID"], uids, tally)


def _mark(ds: Dataset) -> None:
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _deidentify(ds: Dataset, uids: UidMap) -> _Tally:
    tally = _Tally()
    pseudonym = uids.pseudonym(_patient_key(ds))
    _clean(ds, uids, tally, pseudonym=pseudonym)
    for keyword in ("PatientName", "PatientID"):  # Type 2: present in every copy
        if keyword not in ds:
            setattr(ds, keyword, pseudonym)
            tally.add("pseudonymised", keyword)
    _mark(ds)
    _clean_file_meta(ds, uids, tally)
    if getattr(ds, "preamble", None) is not None:
        ds.preamble = bytes(128)  # may hold anything, e.g. a TIFF header
    return tally


def deidentify_dataset(ds: Dataset, uids: UidMap) -> dict[str, int]:
    """De-identify ``ds`` in place (a copy the caller owns) and mark it; returns how many
    attributes were removed, emptied, given dummies, had UIDs replaced, were private and
    removed, or were pseudonymised."""
    tally = _deidentify(ds, uids)
    return {kind: tally.changes[kind] for kind in _CHANGE_KINDS}


def _check_folders(src: Path, dst: Path) -> tuple[Path, Path]:
    if not src.is_dir():
        raise DataError(f"{src}: not a folder to de-identify")
    src_real, dst_real = src.resolve(), dst.resolve()
    if dst_real == src_real or src_real in dst_real.parents:
        raise DataError(f"{dst}: the copy cannot be written inside the source folder {src}")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(f"{dst}: exists and is not an empty folder; choose a new destination")
    return src_real, dst_real


def _files(src: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        found.extend(Path(root) / name for name in sorted(names))
    return found


def _copy_one(path: Path, out: Path, uids: UidMap, tally: _Tally) -> None:
    """Write the de-identified copy of one file, or raise CaseProblem (nothing written)."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise CaseProblem(str(path), "not a DICOM file; not copied") from None
    except Exception as err:  # pydicom raises many kinds on damaged files
        raise CaseProblem(
            str(path), f"DICOM file could not be read ({type(err).__name__}); not copied"
        ) from None
    sop_class = ds.get("SOPClassUID") or getattr(ds, "file_meta", Dataset()).get(
        "MediaStorageSOPClassUID"
    )
    if sop_class == MediaStorageDirectoryStorage:
        raise CaseProblem(str(path), "DICOMDIR index lists patients; not copied")
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        raise CaseProblem(
            str(path),
            "BurnedInAnnotation is YES: the pixels may show identifiers and pixel "
            "scrubbing is out of scope; not copied",
        )
    file_tally = _deidentify(ds, uids)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out, enforce_file_format=True)
    except OSError as err:  # disk full, permissions: stop the whole job
        raise DataError(
            f"{out.parent}: cannot write the de-identified copy ({type(err).__name__})"
        ) from None
    except Exception as err:  # a value pydicom cannot encode: leave this file out
        out.unlink(missing_ok=True)
        raise CaseProblem(
            str(path), f"de-identified copy could not be written ({type(err).__name__})"
        ) from None
    tally.changes.update(file_tally.changes)
    tally.per_keyword.update(file_tally.per_keyword)


def deidentify_tree(
    src: Path, dst: Path, *, on_file: Callable[[int, int], None] | None = None
) -> DeidentifyReport:
    """De-identify every DICOM file under ``src`` into ``dst`` (same relative paths).

    ``dst`` must not exist or be an empty folder, and must not be inside ``src``
    (DataError otherwise; DataError too when the copy cannot be written, e.g. the disk is
    full, and then nothing is left behind). Files that are not copied (not DICOM,
    unreadable, DICOMDIR, BurnedInAnnotation YES) are listed in the report's problems.
    ``on_file(done, total)`` is called after each file. ``src`` is never written to.
    """
    src, dst = _check_folders(Path(src), Path(dst))
    files = _files(src)
    partial = dst.parent / f".{dst.name}.partial-{secrets.token_hex(4)}"
    try:
        partial.mkdir(parents=True)
    except OSError as err:
        reason = type(err).__name__
        raise DataError(f"{dst.parent}: cannot create the copy here ({reason})") from None
    uids = UidMap()
    tally = _Tally()
    problems: list[CaseProblem] = []
    written = 0
    try:
        for done, path in enumerate(files, start=1):
            try:
                _copy_one(path, partial / path.relative_to(src), uids, tally)
                written += 1
            except CaseProblem as problem:
                _log.debug("left out %s: %s", path, problem.reason)
                problems.append(problem)
            if on_file is not None:
                on_file(done, len(files))
        if dst.exists():
            dst.rmdir()  # checked empty above
        partial.rename(dst)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _log.info("de-identified %d DICOM files, left out %d", written, len(problems))
    return DeidentifyReport(
        files_written=written,
        problems=tuple(problems),
        changes={kind: tally.changes[kind] for kind in _CHANGE_KINDS},
        per_keyword=dict(sorted(tally.per_keyword.items())),
    )
