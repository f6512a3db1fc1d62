"""Read a DICOM series (CT, MR, ...) into an ImageVolume, with the checks a site needs.

Files are grouped by SeriesInstanceUID. Slices are ordered by ImagePositionPatient
projected on the slice normal (the cross product of the two ImageOrientationPatient
vectors), or by InstanceNumber when positions are absent; the spacing between slices is
measured from the sorted positions and must be regular. Multi-frame files take positions,
orientation, pixel spacing and rescale from their per-frame or shared functional groups.
Stored values become float32 through RescaleSlope/RescaleIntercept; colour images (RGB,
YBR converted to RGB by pydicom, palette colour) become three channels.

Every problem raises CaseProblem naming the file and the reason; no message or log
record carries a tag value.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

from consortia.client.data.dicom.checks import (
    FrameHeader,
    check_pixel_data,
    first_present,
    frame_headers,
    header_number,
    missing_codec,
    ts_label,
)
from consortia.client.data.formats.geometry import stack_geometry
from consortia.client.data.formats.volume import CaseProblem, ImageVolume

__all__ = [
    "ANNOTATION_MODALITIES",
    "DicomScan",
    "DicomSeries",
    "combined_problem",
    "missing_codec",
    "read_dicom_folder",
    "read_dicom_series",
    "scan_dicom_folder",
]

_log = logging.getLogger("consortia.client.data.dicom.series")

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
ANNOTATION_MODALITIES = frozenset({"SEG", "RTSTRUCT", "SR", "KO", "PR", "REG", "RTPLAN"})
"""Modalities of objects that annotate a series rather than hold its images: a folder
scan sets them apart, so that a series and its SEG or RTSTRUCT may share a folder."""
_PIXEL_SPACING_TOLERANCE = 1e-3  # relative


@dataclass(frozen=True)
class DicomSeries:
    """One series read into a volume; UIDs, paths and the patient ID stay at the site."""

    volume: ImageVolume
    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    series_uid: str
    patient_id: str | None


@dataclass(frozen=True)
class DicomScan:
    """The DICOM series found under a folder, and the files that could not be read."""

    series: tuple[tuple[str, tuple[Path, ...]], ...]
    problems: tuple[CaseProblem, ...]
    annotations: tuple[Path, ...] = ()


def combined_problem(problems: Sequence[CaseProblem], folder: Path) -> CaseProblem:
    """One CaseProblem for several broken files: the only one as it is, else one naming
    every file (relative to ``folder``) with its reason, one per line."""
    if len(problems) == 1:
        return problems[0]

    def name(path: str) -> str:
        try:
            return str(Path(path).relative_to(folder))
        except ValueError:
            return Path(path).name

    lines = "\n".join(f"{name(p.path)}: {p.reason}" for p in problems)
    return CaseProblem(str(folder), f"{len(problems)} broken files:\n{lines}")


def _read(path: Path, *, headers_only: bool) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=headers_only)
    except InvalidDicomError:
        raise CaseProblem(str(path), "not a DICOM file") from None
    except Exception as err:  # pydicom raises many types on damaged files
        raise CaseProblem(
            str(path), f"unreadable DICOM file ({type(err).__name__}; truncated or damaged?)"
        ) from None


def scan_dicom_folder(folder: Path) -> DicomScan:
    """Group the DICOM files under ``folder`` (recursively) by SeriesInstanceUID.

    Reads headers only. Hidden files and DICOMDIR indexes are skipped; any other file that
    is not a readable DICOM file with a SeriesInstanceUID is listed in ``problems``. Series
    are ordered by their first file path, files by path. Raises CaseProblem(folder,
    "no DICOM files") when no series is found.
    """
    if not folder.is_dir():
        raise CaseProblem(str(folder), "not a folder")
    groups: dict[str, list[Path]] = defaultdict(list)
    problems: list[CaseProblem] = []
    annotations: list[Path] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            ds = _read(path, headers_only=True)
        except CaseProblem as problem:
            problems.append(problem)
            continue
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPClassUID") == _DICOMDIR_CLASS:
            continue
        if str(ds.get("Modality") or "").upper() in ANNOTATION_MODALITIES:
            annotations.append(path)
            continue
        series_uid = ds.get("SeriesInstanceUID")
        if not series_uid:
            problems.append(
                CaseProblem(
                    str(path), "DICOM file without SeriesInstanceUID (not an image, or truncated)"
                )
            )
            continue
        groups[str(series_uid)].append(path)
    if not groups:
        detail = f" ({len(problems)} file(s) could not be read as DICOM)" if problems else ""
        raise CaseProblem(str(folder), "no DICOM files" + detail)
    series = sorted(((uid, tuple(paths)) for uid, paths in groups.items()), key=lambda s: s[1])
    _log.debug(
        "found %d series and %d problem file(s) under %s", len(series), len(problems), folder
    )
    return DicomScan(series=tuple(series), problems=tuple(problems), annotations=tuple(annotations))


def read_dicom_folder(folder: Path, *, modalities: Collection[str] | None = None) -> DicomSeries:
    """Read the one series under ``folder``; any unreadable file or a second series is a
    CaseProblem."""
    scan = scan_dicom_folder(folder)
    if scan.problems:
        raise combined_problem(scan.problems, folder)
    if len(scan.series) != 1:
        raise CaseProblem(
            str(folder),
            f"expected one DICOM series, found {len(scan.series)} (mixed series in one "
            "folder: export one series per folder, or run `consortia data init`)",
        )
    return read_dicom_series(scan.series[0][1], modalities=modalities)


# --- reading a series ----------------------------------------------------------------


def _frame_name(path: Path, frame: int, count: int) -> str:
    return str(path) if count == 1 else f"{path} (frame {frame + 1})"


def _is_colour(ds: Dataset) -> bool:
    palette = ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    return palette or int(ds.get("SamplesPerPixel") or 1) == 3


def _decode(ds: Dataset, path: Path, syntax: str, count: int) -> np.ndarray:
    """Decoded values of one file, ``(F, H, W)`` or ``(F, H, W, 3)`` (RGB), before rescale."""
    try:
        pixels = pixel_array(ds)  # YBR is converted to RGB
        if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, ds)
        elif ds.get("ModalityLUTSequence") and count == 1:
            pixels = apply_modality_lut(pixels, ds)
    except Exception as err:  # decoders raise many types on damaged data
        raise CaseProblem(
            str(path),
            f"pixel data could not be decoded ({ts_label(syntax)}: {type(err).__name__})",
        ) from None
    if pixels.ndim == (3 if _is_colour(ds) else 2):
        pixels = pixels[None]
    if pixels.shape[0] != count:
        raise CaseProblem(str(path), f"decoded {pixels.shape[0]} frames, expected {count}")
    return pixels


def _fill(
    datasets: Sequence[Dataset],
    paths: Sequence[Path],
    frames_per_file: Sequence[list[FrameHeader]],
    order: Sequence[int],
) -> np.ndarray:
    """Decode every file straight into a float32 ``(C, F, H, W)`` array in slice order,
    applying each frame's rescale."""
    syntaxes = [check_pixel_data(ds, path) for ds, path in zip(datasets, paths, strict=True)]
    first = datasets[0]
    channels = 3 if _is_colour(first) else 1
    count = sum(len(frames) for frames in frames_per_file)
    out = np.empty((channels, count, int(first.Rows), int(first.Columns)), dtype=np.float32)
    slot = np.empty(count, dtype=np.int64)
    slot[list(order)] = np.arange(count)
    index = 0
    problems: list[CaseProblem] = []
    for ds, path, syntax, frames in zip(datasets, paths, syntaxes, frames_per_file, strict=True):
        try:
            pixels = _decode(ds, path, syntax, len(frames))
        except CaseProblem as problem:
            problems.append(problem)
            index += len(frames)
            continue
        rescale = channels == 1 and not ds.get("ModalityLUTSequence")
        for k, frame in enumerate(frames):
            target = out[:, slot[index]]
            if channels == 3:
                target[...] = np.moveaxis(pixels[k], -1, 0)
            else:
                target[0] = pixels[k]
                if rescale and frame.slope != 1.0:
                    target *= np.float32(frame.slope)
                if rescale and frame.intercept != 0.0:
                    target += np.float32(frame.intercept)
            index += 1
    if problems:
        raise combined_problem(problems, paths[0].parent)
    return out


def _modality_problem(ds: Dataset, path: Path, modalities: Collection[str] | None) -> None:
    if modalities is None:
        return
    wanted = {m.upper() for m in modalities}
    if str(ds.get("Modality") or "").upper() not in wanted:
        raise CaseProblem(
            str(path), f"unexpected modality: expected one of {', '.join(sorted(wanted))}"
        )


def _shape(ds: Dataset) -> tuple[int, int, int]:
    return int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), 3 if _is_colour(ds) else 1


def _shape_problem(ds: Dataset, path: Path, first: tuple[int, int, int]) -> None:
    rows, columns, channels = _shape(ds)
    if (rows, columns) != first[:2]:
        raise CaseProblem(
            str(path),
            f"image size {rows}x{columns} differs from {first[0]}x{first[1]} "
            "of the first file of the series",
        )
    if channels != first[2]:
        raise CaseProblem(str(path), "colour and grey images are mixed within the series")


def _checked_datasets(paths: Sequence[Path], modalities: Collection[str] | None) -> list[Dataset]:
    """Every file read and checked (readable, an accepted modality, the first file's image
    size and kind, pixel data present, decodable here and complete); a CaseProblem names
    every broken file of the series, not only the first."""
    datasets: list[Dataset] = []
    problems: list[CaseProblem] = []
    first: tuple[int, int, int] | None = None
    for path in paths:
        try:
            ds = _read(path, headers_only=False)
        except CaseProblem as problem:
            problems.append(problem)
            continue
        datasets.append(ds)
        try:
            _modality_problem(ds, path, modalities)
            if "PixelData" in ds:
                first = first or _shape(ds)
                _shape_problem(ds, path, first)
            check_pixel_data(ds, path)
        except CaseProblem as problem:
            problems.append(problem)
    if problems:
        raise combined_problem(problems, paths[0].parent)
    return datasets


def _series_uid(datasets: Sequence[Dataset], paths: Sequence[Path]) -> str:
    """The one SeriesInstanceUID of the files."""
    series_uids = {str(ds.get("SeriesInstanceUID") or "") for ds in datasets}
    if len(series_uids) != 1 or "" in series_uids:
        raise CaseProblem(
            str(paths[0].parent), f"the files belong to {len(series_uids)} series, expected one"
        )
    return next(iter(series_uids))


def _series_frames(
    datasets: Sequence[Dataset], paths: Sequence[Path]
) -> tuple[list[list[FrameHeader]], list[str], tuple[float, float]]:
    """The frame headers per file, a name per frame for messages, and the series' pixel
    spacing (the same for every frame)."""
    frames_per_file = [frame_headers(ds, path) for ds, path in zip(datasets, paths, strict=True)]
    if len(paths) > 1 and any(len(frames) > 1 for frames in frames_per_file):
        raise CaseProblem(
            str(paths[0].parent),
            "the series mixes several files with a multi-frame file; expected single-frame "
            "files or one multi-frame file",
        )
    frames = [frame for per_file in frames_per_file for frame in per_file]
    names = (
        [str(p) for p in paths]
        if len(paths) > 1
        else [_frame_name(paths[0], k, len(frames)) for k in range(len(frames))]
    )
    # without PixelSpacing (e.g. secondary capture), pixels are taken to be 1 mm apart
    pixel_spacings = [f.pixel_spacing or (1.0, 1.0) for f in frames]
    pixel_spacing = pixel_spacings[0]
    for name, other in zip(names, pixel_spacings, strict=True):
        if not np.allclose(other, pixel_spacing, rtol=_PIXEL_SPACING_TOLERANCE):
            raise CaseProblem(name, "pixel spacing differs from the first slice of the series")
    return frames_per_file, names, pixel_spacing


def _ordered_files(
    datasets: Sequence[Dataset], paths: Sequence[Path], order: Sequence[int], frames: int
) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """The files and the SOPInstanceUID of each frame, in slice order."""
    sop_uids = [str(ds.get("SOPInstanceUID") or "") for ds in datasets]
    if len(paths) > 1:
        return tuple(paths[i] for i in order), tuple(sop_uids[i] for i in order)
    return (paths[0],), tuple(sop_uids[0] for _ in range(frames))


def read_dicom_series(
    files: Sequence[Path], *, modalities: Collection[str] | None = None
) -> DicomSeries:
    """Read the files of one series (single-frame files, or one multi-frame file) into a
    volume: 2D ``(C, H, W)`` for a single frame, else 3D ``(C, D, H, W)`` in slice order.

    ``modalities``, when given, lists the Modality values accepted (e.g. ``{"CT"}``).
    Raises CaseProblem naming the file for any problem (see the module docstring).
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise CaseProblem("(no files)", "no DICOM files given")
    datasets = _checked_datasets(paths, modalities)
    series_uid = _series_uid(datasets, paths)
    frames_per_file, names, pixel_spacing = _series_frames(datasets, paths)
    frames = [frame for per_file in frames_per_file for frame in per_file]
    stack = stack_geometry(
        [f.position for f in frames],
        [f.orientation for f in frames],
        [f.order_key for f in frames],
        names,
    )
    values = _fill(datasets, paths, frames_per_file, stack.order)
    first = datasets[0]
    slice_spacing = stack.slice_spacing or header_number(
        first_present(first.get("SpacingBetweenSlices"), first.get("SliceThickness")),
        "SliceThickness",
        paths[0],
    )
    if len(frames) == 1:
        array = values[:, 0]
        spacing: tuple[float, ...] = pixel_spacing
    else:
        array = values
        spacing = (float(slice_spacing or 1.0), *pixel_spacing)
    volume = ImageVolume(
        array=array,
        spacing=spacing,
        origin=stack.origin,
        direction=stack.direction,
        modality=str(first.get("Modality") or "") or None,
        manufacturer=str(first.get("Manufacturer") or "") or None,
    )
    ordered_files, ordered_uids = _ordered_files(datasets, paths, stack.order, len(frames))
    _log.debug("read a series of %d frame(s) from %d file(s)", len(frames), len(paths))
    return DicomSeries(
        volume=volume,
        files=ordered_files,
        sop_instance_uids=ordered_uids,
        series_uid=series_uid,
        patient_id=str(first.get("PatientID") or "") or None,
    )
