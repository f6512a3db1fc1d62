"""Synthetic PACS exports for tests: patients, studies, series, a SEG and an RTSTRUCT.

``write_rtstruct`` writes an RT Structure Set whose ROIs are boxes on a series written by
``tests.support.dicom_factory.write_series`` (contour points at voxel centres, so the
filled label map is known exactly). ``write_pacs_export`` writes the usual export
layout: ``PATIENT/STUDY/SERIES/*.dcm`` with the SEG and RTSTRUCT objects in the study
folder, and real-looking identifiers (names, birth dates) as a PACS leaves them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from tests.support.dicom_factory import WrittenSeries, write_seg, write_series

__all__ = ["Box", "PacsExport", "box_mask", "write_pacs_export", "write_rtstruct"]

Box = tuple[int, int, int, int, int, int]
"""A box of voxels: first and last slice, row and column (inclusive)."""


def box_mask(shape: tuple[int, int, int], box: Box) -> np.ndarray:
    """The boolean (D, H, W) mask of a box."""
    d0, d1, h0, h1, w0, w1 = box
    mask = np.zeros(shape, dtype=bool)
    mask[d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1] = True
    return mask


def _contour(series: WrittenSeries, slice_index: int, box: Box, shift: float) -> list[float]:
    _, _, h0, h1, w0, w1 = box
    corners = [(h0, w0), (h0, w1 + shift), (h1, w1 + shift), (h1, w0)]
    affine = series.lps_affine()
    points: list[float] = []
    for h, w in corners:
        points.extend(float(v) for v in (affine @ np.array([slice_index, h, w, 1.0]))[:3])
    return points


def write_rtstruct(
    path: Path,
    series: WrittenSeries,
    rois: Mapping[int, tuple[str, Box]],
    *,
    patient_id: str = "PAT-001",
    outside: bool = False,
) -> Path:
    """An RTSTRUCT on ``series`` with one box per ROI number; ``outside`` moves the last
    ROI's contours 50 voxels off the image (bad input)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientID = patient_id
    ds.PatientName = "Doe^Jane"
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "contours"
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series.series_uid
    study = Dataset()
    study.RTReferencedSeriesSequence = DicomSequence([referenced_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])
    structures, contours = [], []
    for position, (number, (name, box)) in enumerate(sorted(rois.items())):
        roi = Dataset()
        roi.ROINumber = number
        roi.ROIName = name
        roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
        structures.append(roi)
        shift = 50.0 if outside and position == len(rois) - 1 else 0.0
        items = []
        for d in range(box[0], box[1] + 1):
            item = Dataset()
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.ContourData = _contour(series, d, box, shift)
            item.NumberOfContourPoints = 4
            items.append(item)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = DicomSequence(items)
        contours.append(roi_contour)
    ds.StructureSetROISequence = DicomSequence(structures)
    ds.ROIContourSequence = DicomSequence(contours)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass(frozen=True)
class PacsExport:
    """What ``write_pacs_export`` wrote: the root, each patient's series, the label files
    and the label maps they hold (in slice order)."""

    root: Path
    series: dict[str, WrittenSeries]  # "PAT/STUDY/SERIES" -> series
    labels: dict[str, tuple[Path, np.ndarray]]  # series key -> (label file, label map)


def write_pacs_export(
    root: Path, *, patients: int = 2, rows: int = 12, columns: int = 10, slices: int = 4
) -> PacsExport:
    """Each patient has one study with a CT and an MR series; the CT series of every
    patient has a SEG (two segments) and the MR series an RTSTRUCT (one ROI), both
    stored in the study folder. Files carry names and birth dates (identifiers)."""
    series: dict[str, WrittenSeries] = {}
    labels: dict[str, tuple[Path, np.ndarray]] = {}
    shape = (slices, rows, columns)
    for number in range(1, patients + 1):
        patient = f"PAT-{number:03d}"
        study = root / patient / "STUDY1"
        study_uid = generate_uid()
        for modality in ("CT", "MR"):
            written = write_series(
                study / modality,
                n_slices=slices,
                rows=rows,
                columns=columns,
                modality=modality,
                patient_id=patient,
                study_uid=study_uid,
                seed=number * 10 + len(modality),
            )
            key = f"{patient}/STUDY1/{modality}"
            series[key] = written
            if modality == "CT":
                label = np.zeros(shape, dtype=np.uint8)
                label[box_mask(shape, (0, 1, 2, 5, 2, 4))] = 1
                label[box_mask(shape, (2, 3, 6, 9, 5, 8))] = 2
                path = write_seg(
                    study / "seg-ct.dcm", written.files, label, segment_labels=["liver", "lesion"]
                )
                labels[key] = (path, label.astype(np.int64))
            else:
                box: Box = (1, 2, 3, 7, 2, 6)
                path = write_rtstruct(
                    study / "rtstruct-mr.dcm", written, {1: ("liver", box)}, patient_id=patient
                )
                labels[key] = (path, box_mask(shape, box).astype(np.int64))
    return PacsExport(root=root, series=series, labels=labels)
