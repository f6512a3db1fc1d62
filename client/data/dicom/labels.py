"""Read a DICOM SEG (with highdicom) as an integer label map on its image series' grid.

A manifest's `seg` label may also name an RTSTRUCT; it is read by
`consortia.client.data.dicom.rtstruct`.

The label value of a voxel is the number of the segment that covers it (0: none).
SEG frames are put on the series' slices through the SOP Instance UIDs they reference
(single-frame series whose SEG preserves spatial locations); otherwise, e.g. for a
multi-frame image, through their plane positions, which must lie on the image's grid.
A SEG that references another series, has frames of another size or segments that
overlap is a CaseProblem naming the SEG file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from consortia.client.data.dicom.rtstruct import read_rtstruct_label
from consortia.client.data.dicom.series import DicomSeries
from consortia.client.data.formats.geometry import align_to_grid
from consortia.client.data.formats.volume import CaseProblem

__all__ = ["read_seg_label"]

_log = logging.getLogger("consortia.client.data.dicom.labels")


def _read_seg(path: Path) -> hd.seg.Segmentation:
    try:
        return hd.seg.segread(path)
    except InvalidDicomError:
        raise CaseProblem(str(path), "not a DICOM file") from None
    except Exception as err:  # highdicom and pydicom raise many types on other objects
        raise CaseProblem(str(path), f"not a readable DICOM SEG ({type(err).__name__})") from None


def _by_source_instances(
    seg: hd.seg.Segmentation, series: DicomSeries, referenced: set[str]
) -> np.ndarray | None:
    """Label map ``(D, H, W)`` through the referenced source SOP Instance UIDs, or None
    when the SEG does not allow it (its frames may not preserve spatial locations)."""
    uids = series.sop_instance_uids
    if len(set(uids)) != len(uids):  # multi-frame image: a UID does not name a slice
        return None
    slices = [i for i, uid in enumerate(uids) if uid in referenced]
    if not slices:
        return None
    try:
        pixels = seg.get_pixels_by_source_instance(
            [uids[i] for i in slices], combine_segments=True, dtype=np.int64
        )
    except RuntimeError as err:
        if "spatial locations" not in str(err):
            raise
        _log.debug("SEG frames do not preserve spatial locations; using plane positions")
        return None
    rows, columns = series.volume.spatial_shape[-2:]
    labels = np.zeros((len(uids), rows, columns), dtype=np.int64)
    labels[slices] = pixels
    return labels


def _modality(path: Path) -> str:
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality") or "")
    except Exception:  # reported by the reader that follows
        return ""


def read_seg_label(path: Path, series: DicomSeries) -> np.ndarray:
    """The DICOM SEG (or RTSTRUCT, read by `read_rtstruct_label`: a manifest's `seg` may
    name either) at ``path`` as an int64 label map of ``series.volume.spatial_shape``
    (segment number, or ROINumber, = label value), or CaseProblem(path, reason)."""
    if _modality(path) == "RTSTRUCT":
        return read_rtstruct_label(path, series)
    seg = _read_seg(path)
    if seg.get("Modality") != "SEG":
        raise CaseProblem(str(path), "not a DICOM SEG")
    referenced_series = {
        str(item.get("SeriesInstanceUID")) for item in seg.get("ReferencedSeriesSequence") or []
    }
    if series.series_uid not in referenced_series:
        raise CaseProblem(
            str(path), "the SEG references another image series, not the one it is paired with"
        )
    spatial = series.volume.spatial_shape
    rows, columns = spatial[-2:]
    if (int(seg.Rows), int(seg.Columns)) != (rows, columns):
        raise CaseProblem(
            str(path),
            f"SEG frames are {int(seg.Rows)}x{int(seg.Columns)} pixels but the image slices "
            f"are {rows}x{columns}",
        )
    referenced = {
        str(sop)
        for _, series_uid, sop in seg.get_source_image_uids()
        if str(series_uid) == series.series_uid
    }
    unknown = referenced - set(series.sop_instance_uids)
    if unknown:
        raise CaseProblem(
            str(path), f"the SEG references {len(unknown)} image(s) that are not in the series"
        )
    if seg.get("SegmentsOverlap") == "YES":
        raise CaseProblem(
            str(path), "segments overlap: a label map needs at most one segment per voxel"
        )
    try:
        labels = _by_source_instances(seg, series, referenced)
        if labels is None:
            volume = seg.get_volume(combine_segments=True, dtype=np.int64)
            labels = align_to_grid(
                np.asarray(volume.array),
                volume.affine,
                series.volume,
                path=path,
                allow_partial=True,
            )
    except CaseProblem:
        raise
    except Exception as err:  # highdicom: overlapping segments, missing positions, ...
        raise CaseProblem(
            str(path),
            f"SEG frames could not be placed on the image ({type(err).__name__}; overlapping "
            "segments or frames without plane positions?)",
        ) from None
    return np.ascontiguousarray(labels, dtype=np.int64).reshape(spatial)
