"""Read a DICOM RTSTRUCT as an integer label map on its image series' grid.

Each ROI's closed planar contours (ContourData, in patient mm) are mapped to the series'
voxel grid through the volume's geometry and filled slice by slice with Pillow's polygon
fill; contours of one ROI on one slice are combined with exclusive-or, so an inner contour
cuts a hole. The label value of a voxel is the ROINumber of the ROI that covers it (a
higher ROINumber wins where ROIs overlap). An RTSTRUCT that references another series,
has a contour off the slice planes or outside the image, is a CaseProblem naming the file.

rt-utils (the usual library) was not used: it pulls opencv-python, whose GUI build needs
system libraries a node image does not carry; pydicom reads the structure set, and Pillow,
already a dependency, fills the polygons.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from consortia.client.data.dicom.series import DicomSeries
from consortia.client.data.formats.geometry import grid_affine
from consortia.client.data.formats.volume import CaseProblem

__all__ = ["read_rtstruct_label", "referenced_series_uids", "roi_names"]

_PLANE_TOLERANCE = 0.25  # of a slice spacing: how far off a slice plane a contour may lie
_EDGE_TOLERANCE = 0.5  # voxels: a contour point may reach the outer edge of the image


def _read(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise CaseProblem(str(path), "not a DICOM file") from None
    except Exception as err:  # pydicom raises many types on damaged files
        raise CaseProblem(str(path), f"unreadable DICOM file ({type(err).__name__})") from None
    if ds.get("Modality") != "RTSTRUCT":
        raise CaseProblem(str(path), "not a DICOM RTSTRUCT")
    return ds


def referenced_series_uids(ds: Dataset) -> set[str]:
    """The SeriesInstanceUIDs an RTSTRUCT's structure set references."""
    uids: set[str] = set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for study in frame.get("RTReferencedStudySequence") or []:
            for series in study.get("RTReferencedSeriesSequence") or []:
                if series.get("SeriesInstanceUID"):
                    uids.add(str(series.SeriesInstanceUID))
    return uids


def roi_names(ds: Dataset) -> dict[int, str]:
    """ROINumber -> ROIName of a structure set (names are site-local, never logged)."""
    return {
        int(roi.ROINumber): str(roi.get("ROIName") or f"roi {int(roi.ROINumber)}")
        for roi in ds.get("StructureSetROISequence") or []
    }


def _contours(ds: Dataset, path: Path) -> Iterator[tuple[int, np.ndarray]]:
    """(ROINumber, points (N, 3) in mm) of every closed planar contour."""
    for roi in ds.get("ROIContourSequence") or []:
        number = int(roi.get("ReferencedROINumber") or 0)
        for contour in roi.get("ContourSequence") or []:
            kind = str(contour.get("ContourGeometricType") or "CLOSED_PLANAR")
            if kind == "POINT":
                continue
            values = np.asarray([float(v) for v in contour.get("ContourData") or []])
            if values.size < 9 or values.size % 3:
                raise CaseProblem(str(path), f"ROI {number}: a contour with too few points")
            yield number, values.reshape(-1, 3)


def _to_voxels(points: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    homogeneous = np.c_[points, np.ones(len(points))]
    return (inverse @ homogeneous.T).T[:, :3]  # (d, h, w) per point


def _fill(mask: np.ndarray, voxels: np.ndarray) -> None:
    """XOR the polygon of ``voxels`` (h, w columns) into the 2D ``mask``."""
    height, width = mask.shape
    canvas = Image.new("1", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(w), float(h)) for h, w in voxels], fill=1, outline=1)
    mask ^= np.asarray(canvas, dtype=bool)


def read_rtstruct_label(path: Path, series: DicomSeries) -> np.ndarray:
    """The RTSTRUCT at ``path`` as an int64 label map of ``series.volume.spatial_shape``
    (ROINumber = label value), or CaseProblem(path, reason)."""
    ds = _read(path)
    if series.series_uid not in referenced_series_uids(ds):
        raise CaseProblem(
            str(path), "the RTSTRUCT references another image series, not the one it is paired with"
        )
    affine = grid_affine(series.volume)
    if affine is None:
        raise CaseProblem(str(path), "the image has no patient geometry to place contours on")
    spatial = series.volume.spatial_shape
    depth, (height, width) = (spatial[0] if len(spatial) == 3 else 1), spatial[-2:]
    inverse = np.linalg.inv(affine)
    masks: dict[int, np.ndarray] = {}
    for number, points in _contours(ds, path):
        voxels = _to_voxels(points, inverse)
        plane = float(np.round(voxels[:, 0].mean()))
        if np.abs(voxels[:, 0] - plane).max() > _PLANE_TOLERANCE:
            raise CaseProblem(str(path), f"ROI {number}: a contour does not lie on a slice")
        limits = np.array([depth, height, width]) - 1 + _EDGE_TOLERANCE
        if (voxels < -_EDGE_TOLERANCE).any() or (voxels > limits).any():
            raise CaseProblem(
                str(path), f"ROI {number}: a contour lies outside the image (slice or in-plane)"
            )
        mask = masks.setdefault(number, np.zeros((depth, height, width), dtype=bool))
        _fill(mask[int(plane)], voxels[:, 1:])
    labels = np.zeros((depth, height, width), dtype=np.int64)
    for number in sorted(masks):
        labels[masks[number]] = number
    return labels.reshape(spatial)
