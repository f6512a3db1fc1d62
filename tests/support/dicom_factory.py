"""Synthetic DICOM files for tests, written with pydicom (and highdicom for SEG).

``write_series`` writes a CT/MR (or colour secondary capture) series of N slices into a
folder: rows/columns, pixel spacing, slice spacing, orientation, positions,
rescale slope/intercept, patient attributes, compression, optional multi-frame (enhanced,
with functional groups), per-slice attribute overrides and optional truncation. It returns
a ``WrittenSeries`` with what a reader should find (files and UIDs in slice order, the
stored and rescaled values, positions and affines), so tests can compare against it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import ArrayLike
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = [
    "WrittenSeries",
    "declare_transfer_syntax",
    "truncate_file",
    "write_seg",
    "write_series",
]

_UID_PREFIX = "1.2.826.0.1.3680043.10.1234."  # test-only root


def _uid(*parts: object) -> str:
    """A deterministic UID from the given parts."""
    return str(generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(p) for p in parts]))


@dataclass(frozen=True)
class WrittenSeries:
    """What ``write_series`` wrote; every per-slice field is in slice order (sorted along
    the slice normal, which is the order a reader should return) unless explicit
    ``positions`` were given out of order."""

    folder: Path
    files: tuple[Path, ...]
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    stored: np.ndarray  # (D, H, W) or (D, H, W, 3) stored values
    values: np.ndarray  # float32 after rescale, same shape as stored
    positions: np.ndarray  # (D, 3) LPS ImagePositionPatient per slice
    orientation: tuple[float, ...]  # the six ImageOrientationPatient numbers
    pixel_spacing: tuple[float, float]  # (between rows, between columns) = (H, W) spacing
    slice_spacing: float

    @property
    def direction(self) -> np.ndarray:
        """Rows: LPS unit vectors of increasing column (W), row (H) and slice (D) index."""
        row = np.array(self.orientation[:3], dtype=np.float64)
        column = np.array(self.orientation[3:], dtype=np.float64)
        return np.stack([row, column, np.cross(row, column)])

    def lps_affine(self) -> np.ndarray:
        """4x4 matrix mapping a voxel index (d, h, w) to LPS mm."""
        affine = np.eye(4)
        affine[:3, 0] = self.direction[2] * self.slice_spacing
        affine[:3, 1] = self.direction[1] * self.pixel_spacing[0]
        affine[:3, 2] = self.direction[0] * self.pixel_spacing[1]
        affine[:3, 3] = self.positions[0]
        return affine

    def nifti_affine(self) -> np.ndarray:
        """RAS affine of a NIfTI array indexed (i, j, k) = (column, row, slice), i.e. the
        transpose of a (D, H, W) array, as a conversion tool would write it."""
        lps = self.lps_affine()[:, [2, 1, 0, 3]]
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _sop_class(modality: str, colour: bool, multi_frame: bool) -> UID:
    if colour:
        return SecondaryCaptureImageStorage
    if multi_frame:
        return EnhancedMRImageStorage if modality == "MR" else EnhancedCTImageStorage
    return MRImageStorage if modality == "MR" else CTImageStorage


def _base_dataset(
    *,
    sop_class: UID,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    modality: str,
    patient_id: str | None,
    patient_name: str,
    manufacturer: str,
    transfer_syntax: UID,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.Modality = modality
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.Manufacturer = manufacturer
    ds.PositionReferenceIndicator = ""
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, colour: bool, frames: int) -> None:
    rows, columns = stored.shape[-3:-1] if colour else stored.shape[-2:]
    ds.Rows, ds.Columns = int(rows), int(columns)
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if colour else 16
    ds.BitsStored = 8 if colour else 16
    ds.HighBit = 7 if colour else 15
    ds.PixelRepresentation = 0 if colour or stored.dtype == np.uint16 else 1
    if frames > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(stored).tobytes()


def write_series(
    folder: Path,
    *,
    n_slices: int = 4,
    rows: int = 6,
    columns: int = 5,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    slice_spacing: float = 2.5,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: Sequence[float] = (-20.0, -30.0, 40.0),
    positions: ArrayLike | None = None,
    modality: str = "CT",
    rescale_slope: float = 1.0,
    rescale_intercept: float | None = None,
    patient_id: str | None = "PAT-001",
    patient_name: str = "Doe^Jane",
    manufacturer: str = "Consortia Test Scanner",
    series_uid: str | None = None,
    study_uid: str | None = None,
    stored: np.ndarray | None = None,
    colour: bool = False,
    multi_frame: bool = False,
    per_frame_positions: bool = True,
    transfer_syntax: str = ExplicitVRLittleEndian,
    instance_numbers: Sequence[int] | None = None,
    omit: Sequence[str] = (),
    overrides: Mapping[int, Mapping[str, Any]] | None = None,
    file_names: Sequence[str] | None = None,
    truncate_bytes: int = 0,
    truncate_index: int = -1,
    seed: int = 0,
) -> WrittenSeries:
    """Write a synthetic series into ``folder`` and describe it.

    Slice ``i`` sits at ``origin + i * slice_spacing * normal``, unless ``positions`` are
    given (one per slice; they set the number of slices and may be out of order, in which
    case the "slice order" of the returned fields is the order of ``positions``).
    ``stored`` (``(n, rows, columns)`` int16/uint16, or uint8 ``(n, rows, columns, 3)``
    with ``colour``) defaults to seeded random values. Single-frame files are named so
    that path order is the reverse of slice order, unless ``file_names`` are given.
    ``multi_frame`` writes one enhanced CT/MR file whose frames are stored in reverse
    slice order with per-frame positions (or, without ``per_frame_positions``, in slice
    order with a top-level ImagePositionPatient and a shared SpacingBetweenSlices).
    ``omit`` deletes attributes from every file; ``overrides[i]`` sets attributes of
    slice ``i``'s file (None deletes). ``transfer_syntax`` compresses with pydicom's
    encoders (RLE, JPEG-LS, JPEG 2000 from 32x32 pixels up). ``truncate_bytes`` cuts the
    end off the file of slice ``truncate_index``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if positions is not None and stored is None:
        n_slices = len(np.asarray(positions))
    if stored is None:
        shape = (n_slices, rows, columns, 3) if colour else (n_slices, rows, columns)
        stored = (
            rng.integers(0, 256, size=shape, dtype=np.uint8)
            if colour
            else rng.integers(0, 2000, size=shape).astype(np.int16)
        )
    n_slices = int(stored.shape[0])
    if rescale_intercept is None:
        rescale_intercept = -1024.0 if modality == "CT" and not colour else 0.0
    values = stored.astype(np.float32)
    if not colour:
        values = values * np.float32(rescale_slope) + np.float32(rescale_intercept)
    row = np.array(orientation[:3], dtype=np.float64)
    column = np.array(orientation[3:], dtype=np.float64)
    normal = np.cross(row, column)
    if positions is None:
        points = np.array(
            [np.asarray(origin) + i * slice_spacing * normal for i in range(n_slices)]
        )
    else:
        points = np.array(positions, dtype=np.float64)
    series_uid = series_uid or _uid("series", folder, seed)
    study_uid = study_uid or _uid("study", folder, seed)
    frame_uid = _uid("for", study_uid)
    syntax = UID(transfer_syntax)
    common: dict[str, Any] = {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "frame_of_reference_uid": frame_uid,
        "modality": modality,
        "patient_id": patient_id,
        "patient_name": patient_name,
        "manufacturer": manufacturer,
        "transfer_syntax": ExplicitVRLittleEndian,
    }
    datasets: list[Dataset] = []
    if multi_frame:
        sop_uid = _uid("sop", series_uid, "mf")
        ds = _base_dataset(sop_class=_sop_class(modality, colour, True), sop_uid=sop_uid, **common)
        ds.InstanceNumber = 1
        ds.NumberOfFrames = n_slices
        # with per-frame positions, frames are stored in reverse slice order
        file_order = list(range(n_slices))[:: -1 if per_frame_positions else 1]
        shared = Dataset()
        measures = Dataset()
        measures.PixelSpacing = list(pixel_spacing)
        measures.SliceThickness = slice_spacing
        measures.SpacingBetweenSlices = slice_spacing
        shared.PixelMeasuresSequence = DicomSequence([measures])
        plane = Dataset()
        plane.ImageOrientationPatient = list(orientation)
        shared.PlaneOrientationSequence = DicomSequence([plane])
        if not colour:
            transform = Dataset()
            transform.RescaleSlope = rescale_slope
            transform.RescaleIntercept = rescale_intercept
            transform.RescaleType = "HU" if modality == "CT" else "US"
            shared.PixelValueTransformationSequence = DicomSequence([transform])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        if per_frame_positions:
            groups = []
            for i in file_order:
                group = Dataset()
                position = Dataset()
                position.ImagePositionPatient = [float(v) for v in points[i]]
                group.PlanePositionSequence = DicomSequence([position])
                groups.append(group)
            ds.PerFrameFunctionalGroupsSequence = DicomSequence(groups)
        else:
            ds.ImagePositionPatient = [float(v) for v in points[0]]
        _set_pixels(ds, stored[file_order], colour, n_slices)
        datasets.append(ds)
        names = list(file_names or ["multiframe.dcm"])
    else:
        for i in range(n_slices):
            sop_uid = _uid("sop", series_uid, i)
            ds = _base_dataset(
                sop_class=_sop_class(modality, colour, False), sop_uid=sop_uid, **common
            )
            ds.InstanceNumber = (instance_numbers or range(1, n_slices + 1))[i]
            ds.ImagePositionPatient = [float(v) for v in points[i]]
            ds.ImageOrientationPatient = list(orientation)
            ds.PixelSpacing = list(pixel_spacing)
            ds.SliceThickness = slice_spacing
            if not colour:
                ds.RescaleSlope = rescale_slope
                ds.RescaleIntercept = rescale_intercept
            _set_pixels(ds, stored[i], colour, 1)
            datasets.append(ds)
        names = list(file_names or [f"IM{n_slices - 1 - i:04d}.dcm" for i in range(n_slices)])
    files: list[Path] = []
    for i, (ds, name) in enumerate(zip(datasets, names, strict=True)):
        for keyword in omit:
            if keyword in ds:
                delattr(ds, keyword)
        for keyword, value in ((overrides or {}).get(i) or {}).items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    if truncate_bytes:
        truncate_file(files[truncate_index], truncate_bytes)
    sop_uids = (
        tuple(str(datasets[0].SOPInstanceUID) for _ in range(n_slices))
        if multi_frame
        else tuple(str(ds.SOPInstanceUID) for ds in datasets)
    )
    return WrittenSeries(
        folder=folder,
        files=tuple(files),
        series_uid=series_uid,
        study_uid=study_uid,
        frame_of_reference_uid=frame_uid,
        sop_instance_uids=sop_uids,
        stored=stored,
        values=values,
        positions=points,
        orientation=tuple(float(v) for v in orientation),
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        slice_spacing=float(slice_spacing),
    )


def truncate_file(path: Path, n_bytes: int) -> None:
    """Cut the last ``n_bytes`` off a file (as an interrupted copy would)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - n_bytes])


def declare_transfer_syntax(path: Path, uid: str) -> None:
    """Rewrite a native (uncompressed) file so that it declares transfer syntax ``uid``,
    its pixel data encapsulated unchanged (one fragment per frame), as a file from a codec
    we cannot decode would look. Works for UIDs pydicom does not know."""
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames") or 1)
    data = bytes(ds.PixelData)
    size = len(data) // frames
    ds.PixelData = encapsulate([data[i * size : (i + 1) * size] for i in range(frames)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(uid)
    with path.open("wb") as handle:
        out = DicomFileLike(handle)
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, ds.file_meta, enforce_standard=True)
        out.is_little_endian = True
        out.is_implicit_VR = False
        write_dataset(out, ds)


def write_seg(
    path: Path,
    source_files: Sequence[Path],
    labels: np.ndarray,
    *,
    segment_labels: Sequence[str] | None = None,
    series_uid: str | None = None,
) -> Path:
    """Write a binary DICOM SEG with highdicom for ``source_files`` (in slice order, or one
    multi-frame file written by ``write_series``) from an integer label map ``labels`` of
    shape (D, H, W) in slice order: segment number = label value, one segment per value
    1..max. A boolean ``labels`` of shape (D, H, W, S) gives S segments that may overlap."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(p) for p in source_files]
    if len(sources) == 1 and "PerFrameFunctionalGroupsSequence" in sources[0]:
        # highdicom takes the frames of a multi-frame source in stored order
        ds = sources[0]
        orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
        cosines = np.array(orientation.ImageOrientationPatient, dtype=np.float64)
        normal = np.cross(cosines[:3], cosines[3:])
        along = [
            float(np.dot(group.PlanePositionSequence[0].ImagePositionPatient, normal))
            for group in ds.PerFrameFunctionalGroupsSequence
        ]
        labels = labels[np.argsort(np.argsort(along))]
    count = labels.shape[3] if labels.ndim == 4 else int(labels.max())
    names = list(segment_labels or [f"structure {n}" for n in range(1, count + 1)])
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=names[n - 1],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n in range(1, count + 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels.astype(bool if labels.ndim == 4 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or _uid("seg-series", path),
        series_number=100,
        sop_instance_uid=_uid("seg", path),
        instance_number=1,
        manufacturer="Consortia Test",
        manufacturer_model_name="factory",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)
    return path
