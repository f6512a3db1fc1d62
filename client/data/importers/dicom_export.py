"""Describe a DICOM export of any depth (a PACS export, patient/study/series folders) as
manifest cases: one case per image series, labelled by the DICOM SEG or RTSTRUCT that
references it (ReferencedSeriesInstanceUID).

Headers only are read (no pixel data). A case is the folder that holds one series' files;
its id is that folder's path relative to the export. SEG and RTSTRUCT objects may sit
anywhere in the export (usually in the study folder). Left out, each with its file named:
unreadable files, a folder holding several image series (mixed series), a SEG or RTSTRUCT
that references no series of the export, and series without a label. Tag values never
reach a log record; the patient is taken from PatientID when `data check` reads a case.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from consortia.client.data.dicom.rtstruct import referenced_series_uids, roi_names
from consortia.client.data.dicom.series import ANNOTATION_MODALITIES
from consortia.client.data.importers.draft import (
    Draft,
    DraftCase,
    case_id,
    dataset_name,
    padded_size,
)
from consortia.common.errors import ConfigError

__all__ = ["import_dicom_export", "looks_like_dicom"]

logger = logging.getLogger("consortia.client.data.importers.dicom_export")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_LABEL_MODALITIES = ("SEG", "RTSTRUCT")


@dataclass
class _Series:
    """The image files of one series, in path order, with their header facts."""

    files: list[Path] = field(default_factory=list)
    modality: str = ""
    shape: tuple[int, ...] = ()

    @property
    def folder(self) -> Path:
        parents = {path.parent for path in self.files}
        return Path(_common(parents))


@dataclass(frozen=True)
class _Label:
    path: Path
    modality: str
    series: frozenset[str]
    names: dict[int, str]


def _common(folders: set[Path]) -> str:
    import os

    return os.path.commonpath([str(f) for f in folders])


def _files(source: Path) -> list[Path]:
    return sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
    )


def looks_like_dicom(path: Path) -> bool:
    """Whether a file starts like a DICOM Part 10 file (preamble and DICM)."""
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _segment_names(ds: Dataset) -> dict[int, str]:
    return {
        int(item.SegmentNumber): str(item.get("SegmentLabel") or f"segment {item.SegmentNumber}")
        for item in ds.get("SegmentSequence") or []
    }


def _label(path: Path, ds: Dataset, modality: str) -> _Label:
    if modality == "SEG":
        refs = {str(i.get("SeriesInstanceUID")) for i in ds.get("ReferencedSeriesSequence") or []}
        return _Label(path, modality, frozenset(refs), _segment_names(ds))
    return _Label(path, modality, frozenset(referenced_series_uids(ds)), roi_names(ds))


def _scan(source: Path, draft: Draft) -> tuple[dict[str, _Series], list[_Label]]:
    series: dict[str, _Series] = defaultdict(_Series)
    labels: list[_Label] = []
    for path in _files(source):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # pydicom raises many types on foreign or damaged files
            draft.problem(path, "not a readable DICOM file")
            continue
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPClassUID") == _DICOMDIR_CLASS:
            continue
        modality = str(ds.get("Modality") or "").upper()
        if modality in _LABEL_MODALITIES:
            labels.append(_label(path, ds, modality))
        elif modality in ANNOTATION_MODALITIES:
            draft.notes.append(f"{path.relative_to(source)}: {modality} object, not used")
        elif not ds.get("SeriesInstanceUID"):
            draft.problem(path, "DICOM file without SeriesInstanceUID")
        else:
            item = series[str(ds.SeriesInstanceUID)]
            item.files.append(path)
            item.modality = item.modality or modality
            frames = int(ds.get("NumberOfFrames") or 1)
            rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
            depth = frames if frames > 1 else len(item.files)
            item.shape = (depth, rows, columns) if depth > 1 else (rows, columns)
    return dict(series), labels


def _mixed(series: dict[str, _Series], draft: Draft) -> set[str]:
    """Series whose folder holds (or lies inside the folder of) another series."""
    folders = {uid: item.folder for uid, item in series.items()}
    mixed: set[str] = set()
    for uid, folder in folders.items():
        for other, other_folder in folders.items():
            if other != uid and (
                other_folder.is_relative_to(folder) or folder.is_relative_to(other_folder)
            ):
                mixed.add(uid)
    for folder in sorted({folders[uid] for uid in mixed}):
        count = sum(1 for uid in mixed if folders[uid] == folder)
        draft.problem(
            folder,
            f"mixed series: {count} image series in this folder (or one inside another); "
            "export one series per folder",
        )
    return mixed


def _merge_names(draft: Draft, label: _Label) -> None:
    names = draft.labels if draft.labels is not None else {0: "background"}
    for value, name in label.names.items():
        known = names.setdefault(value, name)
        if known != name:
            draft.notes.append(
                f"{label.path.name}: label value {value} is {name!r} here but {known!r} "
                "elsewhere; the manifest keeps the first name"
            )
    draft.labels = names


def _pair(series: dict[str, _Series], labels: list[_Label], draft: Draft) -> dict[str, _Label]:
    """The label of each series (SEG before RTSTRUCT); labels without a series are left out."""
    paired: dict[str, _Label] = {}
    for label in sorted(labels, key=lambda item: (item.modality != "SEG", item.path)):
        targets = [uid for uid in sorted(label.series) if uid in series]
        if not targets:
            draft.problem(label.path, f"the {label.modality} references no series of the export")
            continue
        for uid in targets:
            if uid in paired:
                draft.notes.append(
                    f"{label.path.name}: a second label of one series, not used "
                    f"(kept {paired[uid].path.name})"
                )
                continue
            paired[uid] = label
            _merge_names(draft, label)
    return paired


def _id(source: Path, folder: Path, hashed: bool) -> str:
    relative = folder.relative_to(source) if folder != source else Path(source.name)
    if hashed:
        return "case-" + hashlib.sha256(relative.as_posix().encode()).hexdigest()[:12]
    return case_id(relative)


def import_dicom_export(source: Path, *, hashed_ids: bool = False) -> Draft:
    """The cases of a DICOM export under `source` (see the module docstring)."""
    draft = Draft("DICOM export", source, dataset_name(source), spatial_size=(1, 1))
    series, labels = _scan(source, draft)
    if not series:
        raise ConfigError(f"{source}: no DICOM image series found")
    mixed = _mixed(series, draft)
    paired = _pair({u: s for u, s in series.items() if u not in mixed}, labels, draft)
    if not paired:
        raise ConfigError(
            f"{source}: no DICOM SEG or RTSTRUCT references an image series here; a "
            "segmentation data set needs labels"
        )
    ids: dict[str, Path] = {}
    unlabelled = 0
    for uid, item in sorted(series.items(), key=lambda pair: pair[1].files[0]):
        if uid in mixed:
            continue
        if uid not in paired:
            unlabelled += 1
            continue
        folder, label = item.folder, paired[uid]
        identifier = _id(source, folder, hashed_ids)
        if identifier in ids:
            draft.problem(folder, f"duplicate case id {identifier!r} (also {ids[identifier]})")
            continue
        ids[identifier] = folder
        note = f"{item.modality} series, {len(item.files)} file(s); label: {label.modality}"
        draft.cases.append(DraftCase(identifier, "dicom", folder, "seg", label.path, note=note))
    if unlabelled:
        draft.notes.append(f"{unlabelled} image series without a SEG or RTSTRUCT left out")
    used = [series[uid] for uid in paired if uid in series]
    draft.spatial_size = padded_size([item.shape for item in used])
    draft.modalities = tuple(sorted({item.modality for item in used if item.modality}))
    logger.info("DICOM export: %d case(s), %d left out", len(draft.cases), len(draft.problems))
    return draft
