"""Write predictions: NIfTI masks on the input's grid, DICOM SEG beside DICOM input, and
a CSV of class scores.

A NIfTI input's mask takes the input's own affine (the mask is on its voxel grid); a
DICOM or PNG input's takes the grid the readers measured (`grid_affine`, LPS turned to
NIfTI's RAS). A DICOM SEG (highdicom) references the input series, one segment per
label value but background, named as the card names the labels. Every file is written to
a temporary name and moved into place; inputs are only read.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from consortia.client.data.formats.geometry import LPS_FROM_RAS, grid_affine
from consortia.client.predict.inference import Prediction

__all__ = ["output_stem", "write_dicom_seg", "write_nifti_mask", "write_scores_csv"]

_SUFFIXES = (".nii.gz", ".nii", ".png", ".dcm", ".dicom")


def output_stem(path: Path, taken: set[str]) -> str:
    """The input's name without its image suffix, made unique among `taken`."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem, number = name or "image", 2
    while stem in taken:
        stem, number = f"{name}-{number}", number + 1
    taken.add(stem)
    return stem


def _move_into_place(tmp: Path, target: Path) -> None:
    os.replace(tmp, target)


def _nifti_affine(prediction: Prediction) -> np.ndarray:
    """The RAS affine of the mask's (i, j, k) array."""
    image = prediction.image
    if image.kind == "nifti":
        source: Any = nib.load(image.path)  # a NIfTI image: read_nifti accepted it
        return np.asarray(source.affine, dtype=np.float64)
    lps = grid_affine(image.volume)
    if lps is None:  # PNG: no position recorded, unit spacing
        spacing = (
            (1.0, *image.volume.spacing) if len(image.volume.spacing) == 2 else image.volume.spacing
        )
        return np.diag([*reversed(spacing), 1.0])
    return LPS_FROM_RAS @ lps[:, [2, 1, 0, 3]]


def write_nifti_mask(prediction: Prediction, target: Path) -> Path:
    """The mask as a uint8 NIfTI on the input's grid."""
    if prediction.mask is None:
        raise ValueError("a NIfTI mask needs a segmentation prediction")
    mask = prediction.mask
    affine = _nifti_affine(prediction)
    if prediction.image.kind != "nifti" and mask.ndim == 2:
        mask = mask[None]  # a 2D DICOM or PNG image: one slice of the (d, h, w) grid
    image = nib.Nifti1Image(np.ascontiguousarray(mask.T, dtype=np.uint8), affine)
    image.header.set_xyzt_units("mm")
    tmp = target.with_name(f".{target.name}.tmp.nii.gz")
    nib.save(image, tmp)
    _move_into_place(tmp, target)
    return target


def _segments(labels: Mapping[int, str], present: Sequence[int]) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name="Consortia federated model",
        family=codes.cid7162.ArtificialIntelligence,
        version=version("consortia"),
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=labels.get(value, f"class-{value}")[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for value in present
    ]


def write_dicom_seg(prediction: Prediction, labels: Mapping[int, str], target: Path) -> Path | None:
    """The mask as a DICOM SEG of the input series; None when no voxel is labelled (a
    SEG needs a segment)."""
    series = prediction.image.series
    if series is None or prediction.mask is None:
        raise ValueError("a DICOM SEG needs a segmentation of a DICOM series")
    sources = [pydicom.dcmread(path) for path in series.files]
    mask = prediction.mask if prediction.mask.ndim == 3 else prediction.mask[None]
    present = [int(v) for v in np.unique(mask) if v != 0]
    if not present:
        return None
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segments(labels, present),
        series_instance_uid=hd.UID(),
        series_number=9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Consortia",
        manufacturer_model_name="consortia predict",
        software_versions=version("consortia"),
        device_serial_number="none",
        content_label="CONSORTIA",
        content_description="Segmentation by a federated model (research use)",
    )
    tmp = target.with_name(f".{target.name}.tmp")
    seg.save_as(tmp)
    _move_into_place(tmp, target)
    return target


def write_scores_csv(
    rows: Sequence[tuple[str, np.ndarray]], labels: Mapping[int, str], target: Path
) -> Path:
    """One row per image: its name, the predicted label and each label's score."""
    names = [labels.get(value, f"class-{value}") for value in range(len(labels))]
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "prediction", *names])
        for image, scores in rows:
            best: Any = (
                names[int(np.argmax(scores))]
                if len(names) == len(scores)
                else int(np.argmax(scores))
            )
            writer.writerow([image, best, *(f"{float(s):.6f}" for s in scores)])
    _move_into_place(tmp, target)
    return target
