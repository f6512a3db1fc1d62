"""Read NIfTI images and label maps (with nibabel) in the ImageVolume conventions.

A NIfTI array is indexed (i, j, k[, t]) and its affine maps (i, j, k) to RAS mm. An image
becomes ``(C, D, H, W)`` with W = i, H = j, D = k (the transpose of the array) and the
4th dimension as channels; a 2D file becomes ``(1, H, W)``. Origin and direction are
converted from RAS to LPS, the DICOM convention, so NIfTI and DICOM volumes compare.
A label file is put on the voxel grid of its image (NIfTI or DICOM): transposed and
flipped when its axes are a permutation or reversal of the image's, else CaseProblem.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from consortia.client.data.formats.geometry import LPS_FROM_RAS, align_to_grid
from consortia.client.data.formats.volume import CaseProblem, ImageVolume

__all__ = ["read_nifti", "read_nifti_label"]

_log = logging.getLogger("consortia.client.data.formats.nifti")


def _load(path: Path) -> tuple[Any, np.ndarray]:
    """The nibabel image and its LPS affine; CaseProblem if the file cannot be read."""
    try:
        image = nib.load(path)
    except FileNotFoundError:
        raise CaseProblem(str(path), "file not found") from None
    except Exception as err:  # nibabel raises many types on damaged or foreign files
        raise CaseProblem(str(path), f"not a readable NIfTI file ({type(err).__name__})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise CaseProblem(str(path), f"not a NIfTI file ({type(image).__name__})")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise CaseProblem(str(path), "the NIfTI affine is not finite")
    return image, LPS_FROM_RAS @ affine


def _data(image: Any, path: Path, *, labels: bool) -> np.ndarray:
    """Voxel values (scaled by scl_slope/scl_inter), with trailing length-1 axes beyond the
    third dropped; CaseProblem if the data cannot be read (e.g. a truncated file)."""
    try:
        data = np.asanyarray(image.dataobj) if labels else image.get_fdata(dtype=np.float32)
    except Exception as err:  # truncated gzip: EOFError, OSError, zlib.error, ValueError
        raise CaseProblem(
            str(path), f"NIfTI voxel data could not be read ({type(err).__name__}; truncated?)"
        ) from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 2 or data.ndim > 4 or data.size == 0:
        raise CaseProblem(str(path), f"unsupported NIfTI shape {tuple(data.shape)}")
    return data


def read_nifti(path: Path) -> ImageVolume:
    """A NIfTI image as float32 ``(1, H, W)``, ``(1, D, H, W)`` or ``(T, D, H, W)``."""
    image, affine = _load(path)
    data = _data(image, path, labels=False)
    columns = affine[:3, :3]
    lengths = np.linalg.norm(columns, axis=0)
    if np.any(lengths < 1e-6):
        raise CaseProblem(str(path), "the NIfTI affine is degenerate (an axis has no length)")
    # (i, j, k, t) -> (t, k, j, i); (i, j[, k]) -> (1, [k,] j, i)
    array = np.transpose(data, (3, 2, 1, 0)) if data.ndim == 4 else data.T[None]
    spacing = tuple(float(s) for s in lengths[: array.ndim - 1][::-1])
    direction = (columns / lengths).T
    origin = (float(affine[0, 3]), float(affine[1, 3]), float(affine[2, 3]))
    _log.debug("read a NIfTI image of shape %s", array.shape)
    return ImageVolume(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing=spacing,
        origin=origin,
        direction=direction,
    )


def read_nifti_label(path: Path, reference: ImageVolume) -> np.ndarray:
    """A NIfTI label map as int64 in ``reference.spatial_shape``, on the reference's grid.

    Values must be non-negative integers. The label's grid (shape, spacing, origin and
    axes, after RAS to LPS) must be the reference's up to an axis permutation or flip;
    otherwise CaseProblem says what differs.
    """
    image, affine = _load(path)
    data = _data(image, path, labels=True)
    if data.ndim == 4:
        raise CaseProblem(str(path), f"a label map must be 2D or 3D, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.issubdtype(data.dtype, np.floating) or not np.all(np.isfinite(data)):
            raise CaseProblem(str(path), "label values must be integers")
        if not np.array_equal(data, np.round(data)):
            raise CaseProblem(str(path), "label values must be integers, found fractions")
    if data.size and data.min() < 0:
        raise CaseProblem(str(path), "label values must not be negative")
    labels = data.astype(np.int64)
    if labels.ndim == 2:
        labels = labels[:, :, None]
    # (i, j, k) -> (k, j, i), with the affine's columns in the same order
    return align_to_grid(labels.T, affine[:, [2, 1, 0, 3]], reference, path=path)
