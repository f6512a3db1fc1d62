"""Expand a manifest into its list of cases: explicit `[[case]]` entries, globbed files and
npz archives, selected deterministically and given a split where the manifest fixes one.

Nothing here reads images: a case says where its image and label are. Problems that
belong to one case (a missing CSV row, an unreadable npz) are carried on the case and
reported when it is read; mistakes in the manifest itself are `ConfigError`s.
"""

from __future__ import annotations

import csv
import glob
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from consortia.client.data.manifest import (
    ClassCsv,
    FilesSource,
    ManifestFile,
    NpzSource,
    Selector,
)
from consortia.client.data.splits import hash_fraction, patient_split, split_conflicts
from consortia.common.config.settings import Task
from consortia.common.errors import ConfigError

__all__ = ["CaseSpec", "ImageSource", "LabelSource", "case_files", "expand_cases", "image_stem"]

ImageKind = Literal["dicom", "nifti", "png", "npz"]
LabelKind = Literal["mask", "seg", "class", "npz"]
_SUFFIXES = (".nii.gz", ".nii", ".png", ".dcm")


@dataclass(frozen=True)
class ImageSource:
    """Where a case's image is: a DICOM folder or file, a NIfTI or PNG file, or
    `key[index]` of an npz archive."""

    kind: ImageKind
    path: Path
    key: str | None = None
    index: int | None = None


@dataclass(frozen=True)
class LabelSource:
    """Where a case's label is; `problem` says why there is none (e.g. no CSV row)."""

    kind: LabelKind
    path: Path | None = None
    value: int | None = None
    key: str | None = None
    index: int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class CaseSpec:
    """One case as the manifest describes it. `split` is None where the split rule
    decides after the DICOM header gives the patient."""

    id: str
    image: ImageSource
    label: LabelSource | None
    split: str | None
    patient: str | None
    origin: str
    extra_files: tuple[Path, ...] = field(default=())


def image_stem(name: str) -> str:
    """A file or folder name without its image suffix: the case id of a globbed file."""
    lower = name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _image_kind(path: Path) -> ImageKind:
    lower = path.name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        return "nifti"
    if lower.endswith(".png"):
        return "png"
    return "dicom"  # a series folder, or a single DICOM file whatever its name


def _read_class_csv(table: ClassCsv, root: Path) -> tuple[dict[str, dict[str, str]], str | None]:
    """Rows by case id, or the reason the CSV cannot be used."""
    path = root / table.csv
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            wanted = [table.id_column, table.label_column, table.patient_column]
            wanted.append(table.split_column)
            missing = [name for name in wanted if name is not None and name not in header]
            if missing:
                return {}, f"column(s) {', '.join(missing)} not in the header"
            return {row[table.id_column].strip(): row for row in reader}, None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return {}, f"labels CSV cannot be read: {err}"


def _class_fraction_keeps(case_id: str, label: int | None, fractions: dict[int, float]) -> bool:
    if label is None or label not in fractions:
        return True
    return hash_fraction(case_id, "class_fraction") < fractions[label]


def _expand_files(source: FilesSource, where: str, mf: ManifestFile) -> Iterator[CaseSpec]:
    root = mf.root
    matches = sorted(glob.glob(source.images, root_dir=root, recursive=True))
    if not matches:
        raise ConfigError(f"{mf.path}: {where}.images: {source.images!r} matches nothing")
    rows: dict[str, dict[str, str]] = {}
    csv_problem: str | None = None
    if source.classes is not None:
        rows, csv_problem = _read_class_csv(source.classes, root)
    kept = (m for position, m in enumerate(matches) if source.select.keeps(position))
    for match in kept:
        image_path = root / match
        name = image_path.name
        stem = image_stem(name)
        patient: str | None = None
        split: str | None = None if source.split == "rule" else source.split
        label: LabelSource | None = None
        extra: tuple[Path, ...] = ()
        if source.masks is not None:
            label = LabelSource("mask", path=root / source.masks.format(name=name, stem=stem))
        elif source.segs is not None:
            label = LabelSource("seg", path=root / source.segs.format(name=name, stem=stem))
        elif source.class_ is not None:
            label = LabelSource("class", value=source.class_)
        elif source.classes is not None:
            table = source.classes
            csv_path = root / table.csv
            extra = (csv_path,)
            row = rows.get(stem, rows.get(name))
            if csv_problem is not None or row is None:
                reason = csv_problem or f"no row for case {stem!r} in the labels CSV"
                label = LabelSource("class", path=csv_path, problem=reason)
            else:
                label = _csv_label(row, table, csv_path)
                if table.patient_column and row[table.patient_column].strip():
                    patient = row[table.patient_column].strip()
                if table.split_column:
                    split = row[table.split_column].strip().lower() or None
        if (
            source.class_fraction is not None
            and label is not None
            and not _class_fraction_keeps(stem, label.value, source.class_fraction)
        ):
            continue
        image = ImageSource(_image_kind(image_path), image_path)
        yield CaseSpec(stem, image, label, split, patient, where, extra)


def _csv_label(row: dict[str, str], table: ClassCsv, csv_path: Path) -> LabelSource:
    text = (row.get(table.label_column) or "").strip()
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        problem = f"label {text!r} in column {table.label_column!r} is not a class number >= 0"
        return LabelSource("class", path=csv_path, problem=problem)
    return LabelSource("class", path=csv_path, value=value)


def _npz_lengths(path: Path, keys: list[str]) -> dict[str, int]:
    """Number of entries of each present key, from the .npy headers (no array is read)."""
    lengths: dict[str, int] = {}
    with zipfile.ZipFile(path) as archive:
        members = set(archive.namelist())
        for key in keys:
            if f"{key}.npy" not in members:
                continue
            with archive.open(f"{key}.npy") as handle:
                major, _ = np.lib.format.read_magic(handle)
                if major == 1:
                    shape, _, _ = np.lib.format.read_array_header_1_0(handle)
                else:
                    shape, _, _ = np.lib.format.read_array_header_2_0(handle)
                lengths[key] = int(shape[0]) if shape else 0
    return lengths


def _expand_npz(source: NpzSource, where: str, mf: ManifestFile, task: Task) -> Iterator[CaseSpec]:
    path = mf.root / source.file
    prefix = path.stem
    try:
        lengths = _npz_lengths(path, [f"{split}_images" for split in source.splits])
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ConfigError(f"{mf.path}: {where}.file: cannot read {path}: {err}") from None
    with archive:
        for split in source.splits:
            key = f"{split}_images"
            if key not in lengths:
                continue
            labels: np.ndarray | None = None
            label_key = f"{split}_labels"
            if task is Task.CLASSIFICATION and label_key in archive.files:
                try:
                    labels = np.asarray(archive[label_key]).reshape(-1)
                except (OSError, ValueError, zipfile.BadZipFile, EOFError):
                    labels = None
            if source.class_fraction is not None and labels is None:
                raise ConfigError(
                    f"{mf.path}: {where}.class_fraction: needs {label_key} (class labels)"
                )
            yield from _npz_cases(source, where, path, prefix, split, lengths[key], labels, task)


def _npz_cases(
    source: NpzSource,
    where: str,
    path: Path,
    prefix: str,
    split: str,
    length: int,
    labels: np.ndarray | None,
    task: Task,
) -> Iterator[CaseSpec]:
    fixed_split = split if source.split is None else source.split
    case_split = None if fixed_split == "rule" else fixed_split
    for index in _selected(source.select, length):
        case_id = f"{prefix}-{split}-{index}"
        label: LabelSource
        if task is Task.SEGMENTATION:
            label = LabelSource("npz", path=path, key=f"{split}_masks", index=index)
        elif labels is None:
            label = LabelSource("class", path=path, problem=f"{split}_labels is missing")
        elif index >= len(labels):
            label = LabelSource("class", path=path, problem=f"{split}_labels has no entry {index}")
        else:
            value = int(labels[index])
            label = LabelSource("class", path=path, value=value)
            if source.class_fraction is not None and not _class_fraction_keeps(
                case_id, value, source.class_fraction
            ):
                continue
        image = ImageSource("npz", path, key=f"{split}_images", index=index)
        yield CaseSpec(case_id, image, label, case_split, None, where)


def _selected(select: Selector, length: int) -> range:
    stop = length if select.stop is None else min(select.stop, length)
    first = max(select.start, 0)
    first += (select.remainder - first) % select.modulo
    return range(first, stop, select.modulo)


def _explicit_cases(mf: ManifestFile) -> Iterator[CaseSpec]:
    root = mf.root
    for number, entry in enumerate(mf.manifest.case):
        ref = entry.image
        image: ImageSource
        if ref.dicom is not None:
            image = ImageSource("dicom", root / ref.dicom)
        elif ref.nifti is not None:
            image = ImageSource("nifti", root / ref.nifti)
        elif ref.png is not None:
            image = ImageSource("png", root / ref.png)
        else:
            image = ImageSource("npz", root / str(ref.npz), key=ref.key, index=ref.index)
        label: LabelSource | None = None
        if entry.label is not None:
            if entry.label.mask is not None:
                label = LabelSource("mask", path=root / entry.label.mask)
            elif entry.label.seg is not None:
                label = LabelSource("seg", path=root / entry.label.seg)
            else:
                label = LabelSource("class", value=entry.label.class_)
        yield CaseSpec(entry.id, image, label, entry.split, entry.patient, f"case[{number}]")


def expand_cases(mf: ManifestFile) -> list[CaseSpec]:
    """Every case of the manifest, with the splits that can be known before reading.

    Raises `ConfigError` for duplicate case ids, cases without a split under the
    `explicit` rule, a bad split name in a CSV, and one patient put in two splits.
    """
    manifest = mf.manifest
    task = manifest.dataset.task
    cases = list(_explicit_cases(mf))
    for number, files in enumerate(manifest.files):
        cases.extend(_expand_files(files, f"files[{number}]", mf))
    for number, npz in enumerate(manifest.npz):
        cases.extend(_expand_npz(npz, f"npz[{number}]", mf, task))
    origins: dict[str, str] = {}
    rule = manifest.split
    resolved: list[CaseSpec] = []
    for case in cases:
        if case.id in origins:
            raise ConfigError(
                f"{mf.path}: case id {case.id!r} comes from both {origins[case.id]} "
                f"and {case.origin}; case ids must be unique"
            )
        origins[case.id] = case.origin
        if case.split is not None and case.split not in ("train", "val", "test"):
            raise ConfigError(f"{mf.path}: {case.origin}: case {case.id!r}: bad split")
        if case.split is None and rule.rule == "explicit":
            raise ConfigError(
                f"{mf.path}: {case.origin}: case {case.id!r} has no split; give one or "
                'set [split] rule = "patient-hash"'
            )
        if case.split is None and (case.patient is not None or case.image.kind != "dicom"):
            patient = case.patient if case.patient is not None else case.id
            case = CaseSpec(
                case.id,
                case.image,
                case.label,
                patient_split(patient, rule),
                case.patient,
                case.origin,
                case.extra_files,
            )
        resolved.append(case)
    _check_static_conflicts(mf, resolved)
    return resolved


def _check_static_conflicts(mf: ManifestFile, cases: list[CaseSpec]) -> None:
    pairs = [(c.patient, c.split) for c in cases if c.patient is not None and c.split is not None]
    conflicts = split_conflicts((patient, split) for patient, split in pairs if patient)
    if conflicts:
        patient, splits = next(iter(conflicts.items()))
        ids = sorted(c.id for c in cases if c.patient == patient)[:5]
        raise ConfigError(
            f"{mf.path}: cases {', '.join(ids)} are of one patient but in splits "
            f"{', '.join(splits)}; all cases of a patient must be in one split"
            f" ({len(conflicts)} patient(s) affected)"
        )


def case_files(case: CaseSpec) -> list[Path]:
    """Every file that the case's image and label come from (DICOM folders listed)."""
    files: list[Path] = []
    image = case.image
    if image.kind == "dicom" and image.path.is_dir():
        files.extend(sorted(p for p in image.path.rglob("*") if p.is_file()))
    else:
        files.append(image.path)
    if case.label is not None and case.label.path is not None:
        files.append(case.label.path)
    files.extend(case.extra_files)
    return files
