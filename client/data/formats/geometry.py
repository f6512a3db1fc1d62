"""Voxel grids in patient space: put a label map on the voxel grid of its image.

A grid is described by a 4x4 affine that maps a voxel index to a position in mm in the
patient's LPS space (the DICOM convention). Two grids are "the same" when they have the
same shape, spacing, origin and axes, up to a permutation and reversal of the axes; a label
map on such a grid is transposed and flipped onto the image's grid, never resampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from consortia.client.data.formats.volume import CaseProblem, ImageVolume

__all__ = [
    "DIRECTION_TOLERANCE",
    "LPS_FROM_RAS",
    "ORIENTATION_TOLERANCE",
    "ORIGIN_TOLERANCE_VOXELS",
    "SLICE_TOLERANCE_MM",
    "SLICE_TOLERANCE_RELATIVE",
    "SPACING_TOLERANCE",
    "StackGeometry",
    "align_to_grid",
    "grid_affine",
    "stack_geometry",
]

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Multiply a RAS affine (NIfTI) on the left by this to get an LPS affine (DICOM)."""

DIRECTION_TOLERANCE = 1e-3
"""Matching axes may differ by this much in the cosine of their angle (about 2.6 degrees)."""

SPACING_TOLERANCE = 1e-3
"""Relative difference allowed between the voxel spacings of matching axes."""

ORIGIN_TOLERANCE_VOXELS = 0.1
"""Distance, in voxels along each axis, allowed between the first voxels of two grids."""


ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between the direction cosines of two slices of one series."""

SLICE_TOLERANCE_MM = 0.01
SLICE_TOLERANCE_RELATIVE = 0.01
"""Slice gaps may differ from their median by max(0.01 mm, 1% of the median); closer
slices are duplicates; slices may sit this far off the line along the slice normal."""


@dataclass(frozen=True)
class StackGeometry:
    """Where a stack of image planes lies: ``order`` lists the planes in slice order."""

    order: tuple[int, ...]
    slice_spacing: float | None
    origin: tuple[float, float, float] | None
    direction: np.ndarray | None


def _unit_orientation(orientation: np.ndarray, name: str) -> np.ndarray:
    row, column = orientation[:3], orientation[3:]
    row_norm, column_norm = float(np.linalg.norm(row)), float(np.linalg.norm(column))
    if (
        abs(row_norm - 1) > 0.01
        or abs(column_norm - 1) > 0.01
        or abs(float(row @ column)) > ORIENTATION_TOLERANCE * 10
    ):
        raise CaseProblem(name, "ImageOrientationPatient is not two orthogonal unit vectors")
    row, column = row / row_norm, column / column_norm
    return np.stack([row, column, np.cross(row, column)])


def _common_direction(
    orientations: Sequence[np.ndarray | None], names: Sequence[str]
) -> np.ndarray | None:
    """The slice axes (as rows) that every plane shares, None when no plane has an
    orientation; CaseProblem names the first plane without one or with an odd one."""
    known = [o for o in orientations if o is not None]
    if not known:
        return None
    missing = [i for i, o in enumerate(orientations) if o is None]
    if missing:
        raise CaseProblem(names[missing[0]], "ImageOrientationPatient is missing")
    cosines = np.array(known, dtype=np.float64)
    # the orientation most slices share is the reference; the first other one is odd
    _, first_of, counts = np.unique(
        np.round(cosines / ORIENTATION_TOLERANCE), axis=0, return_index=True, return_counts=True
    )
    majority = int(first_of[np.argmax(counts)])
    odd = np.flatnonzero(
        np.max(np.abs(cosines - cosines[majority]), axis=1) > ORIENTATION_TOLERANCE
    )
    if odd.size:
        raise CaseProblem(
            names[int(odd[0])], "orientation differs from the other slices of the series"
        )
    return _unit_orientation(cosines[majority], names[majority])


def _stack_by_keys(
    positions: Sequence[np.ndarray | None],
    direction: np.ndarray | None,
    order_keys: Sequence[int | None],
    names: Sequence[str],
) -> StackGeometry:
    """Planes ordered by ``order_keys`` (InstanceNumber), when positions or the orientation
    are unknown; the stack is not measured."""
    count = len(names)
    if count > 1 and any(p is not None for p in positions):
        missing = [i for i, p in enumerate(positions) if p is None]
        if missing and direction is not None:
            raise CaseProblem(names[missing[0]], "ImagePositionPatient is missing")
    keys = list(order_keys)
    if count > 1 and any(k is None for k in keys):
        raise CaseProblem(
            names[keys.index(None)],
            "cannot order the slices: ImagePositionPatient and InstanceNumber are missing",
        )
    if len(set(keys)) < count:
        raise CaseProblem(
            names[0], "cannot order the slices: no positions and duplicate InstanceNumber"
        )
    order = (
        tuple(int(i) for i in np.argsort(np.array(keys, dtype=np.int64), kind="stable"))
        if count > 1
        else (0,)
    )
    return StackGeometry(order=order, slice_spacing=None, origin=None, direction=direction)


def _slice_spacing(
    points: np.ndarray,
    normal: np.ndarray,
    along: np.ndarray,
    order: np.ndarray,
    names: Sequence[str],
) -> float:
    """The spacing between the ``order``ed slices at ``points`` (``along`` the ``normal``),
    which must be distinct, regular and stacked along the normal."""
    count = len(names)
    sorted_along = along[order]
    gaps = np.diff(sorted_along)
    duplicate = np.flatnonzero(gaps < SLICE_TOLERANCE_MM)
    if duplicate.size:
        raise CaseProblem(
            names[order[duplicate[0] + 1]],
            "same position as another slice of the series (duplicate slice, or several "
            "acquisitions, echoes or time points in one series)",
        )
    typical = float(np.median(gaps))
    tolerance = max(SLICE_TOLERANCE_MM, SLICE_TOLERANCE_RELATIVE * typical)
    irregular = np.flatnonzero(np.abs(gaps - typical) > tolerance)
    if irregular.size:
        raise CaseProblem(
            names[order[irregular[0] + 1]],
            f"inconsistent slice spacing: a gap of {gaps[irregular[0]]:.4g} mm where the "
            f"series has {typical:.4g} mm (a missing or extra slice?)",
        )
    spacing = float(sorted_along[-1] - sorted_along[0]) / (count - 1)
    steps = points[order] - points[order[0]]
    distance = sorted_along - sorted_along[0]
    lateral = np.linalg.norm(steps - np.outer(distance, normal), axis=1)
    limit = np.maximum(SLICE_TOLERANCE_MM, SLICE_TOLERANCE_RELATIVE * distance)
    if np.any(lateral > limit):
        raise CaseProblem(
            names[order[int(np.argmax(lateral - limit))]],
            "slices are not stacked along the slice normal (gantry tilt or a sheared "
            "series), which would need resampling",
        )
    return spacing


def stack_geometry(
    positions: Sequence[np.ndarray | None],
    orientations: Sequence[np.ndarray | None],
    order_keys: Sequence[int | None],
    names: Sequence[str],
) -> StackGeometry:
    """Order image planes along the slice normal and measure the stack, or raise CaseProblem
    naming the plane (file) at fault.

    ``orientations`` are the six ImageOrientationPatient numbers per plane (all the same
    within tolerance), ``positions`` the ImagePositionPatient of each plane. When any
    position or the orientation is unknown, planes are ordered by ``order_keys``
    (InstanceNumber) and the spacing between slices is not measured. Positions must be
    distinct, regularly spaced and lie on a line along the normal (no gantry tilt).
    """
    direction = _common_direction(orientations, names)
    if direction is None or any(p is None for p in positions):
        return _stack_by_keys(positions, direction, order_keys, names)
    points = np.array(positions, dtype=np.float64)
    normal = direction[2]
    along = points @ normal
    order_array = np.argsort(along, kind="stable")
    spacing: float | None = None
    if len(names) > 1:
        spacing = _slice_spacing(points, normal, along, order_array, names)
    first = points[order_array[0]]
    return StackGeometry(
        order=tuple(int(i) for i in order_array),
        slice_spacing=spacing,
        origin=(float(first[0]), float(first[1]), float(first[2])),
        direction=direction,
    )


def grid_affine(volume: ImageVolume) -> np.ndarray | None:
    """The 4x4 matrix mapping a voxel index ``(d, h, w)`` of ``volume`` to LPS mm.

    A 2D volume is treated as a single slice (``d`` = 0, 1 mm thick). Returns None when the
    volume has no origin or direction (e.g. a PNG).
    """
    if volume.origin is None or volume.direction is None:
        return None
    spacing = volume.spacing if len(volume.spacing) == 3 else (1.0, *volume.spacing)
    direction = np.asarray(volume.direction, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, 0] = direction[2] * spacing[0]
    affine[:3, 1] = direction[1] * spacing[1]
    affine[:3, 2] = direction[0] * spacing[2]
    affine[:3, 3] = volume.origin
    return affine


def _fmt(values: np.ndarray | tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _axes(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (as rows) and lengths of the three index axes of an affine."""
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    lengths = np.linalg.norm(columns, axis=0)
    return (columns / np.where(lengths > 0, lengths, 1.0)).T, lengths


def _axis_match(
    affine: np.ndarray, ref_affine: np.ndarray, path: Path | str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which reference axis each label axis lies along (``perm``), whether it runs the
    other way (``flips``), and both grids' spacings; CaseProblem when the label grid is
    degenerate or not aligned with the reference axes."""
    label_units, label_spacing = _axes(affine)
    ref_units, ref_spacing = _axes(ref_affine)
    if np.any(label_spacing < 1e-6) or np.linalg.matrix_rank(label_units) < 3:
        raise CaseProblem(str(path), "label geometry is degenerate (an axis has no length)")
    cosines = label_units @ ref_units.T  # [label axis, reference axis]
    perm = np.argmax(np.abs(cosines), axis=1)
    best = np.abs(cosines[np.arange(3), perm])
    if len(set(perm.tolist())) < 3 or np.any(best < 1 - DIRECTION_TOLERANCE):
        angle = float(np.degrees(np.arccos(np.clip(best.min(), -1.0, 1.0))))
        raise CaseProblem(
            str(path),
            f"label orientation differs from the image: a label axis is {angle:.1f} degrees "
            "away from the nearest image axis",
        )
    flips = cosines[np.arange(3), perm] < 0
    return perm, flips, label_spacing, ref_spacing


def _grid_problems(
    shape: tuple[int, ...],
    ref_shape: tuple[int, ...],
    spacings: tuple[np.ndarray, np.ndarray],
    first: np.ndarray,
    ref_affine: np.ndarray,
    allow_partial: bool,
) -> tuple[list[str], np.ndarray]:
    """What differs between the reoriented label grid (``shape``, ``spacings[0]``, first
    voxel at ``first``) and the reference grid, and the label block's offset in it."""
    spacing, ref_spacing = spacings
    index = np.linalg.solve(ref_affine[:3, :3], first - ref_affine[:3, 3])
    problems: list[str] = []
    if allow_partial:
        if any(n > m for n, m in zip(shape, ref_shape, strict=True)):
            problems.append(f"label shape {shape} exceeds image shape {ref_shape}")
    elif shape != ref_shape:
        problems.append(f"label shape {shape} differs from image shape {ref_shape}")
    compared = [b for b in range(3) if ref_shape[b] > 1 or shape[b] > 1]
    if any(abs(spacing[b] - ref_spacing[b]) > SPACING_TOLERANCE * ref_spacing[b] for b in compared):
        problems.append(
            f"label spacing {_fmt(spacing)} mm differs from image spacing {_fmt(ref_spacing)} mm"
        )
    offset = np.rint(index) if allow_partial else np.zeros(3)
    if np.any(np.abs(index - offset) > ORIGIN_TOLERANCE_VOXELS):
        distance = float(np.linalg.norm(first - ref_affine[:3, 3]))
        problems.append(
            f"label origin is {distance:.3g} mm from the image origin "
            f"({_fmt(index - offset)} voxels off the image grid)"
        )
    elif allow_partial and (
        np.any(offset < 0) or np.any(offset + np.array(shape) > np.array(ref_shape))
    ):
        problems.append("label extends outside the image")
    return problems, offset


def align_to_grid(
    labels: np.ndarray,
    affine: np.ndarray,
    reference: ImageVolume,
    *,
    path: Path | str,
    allow_partial: bool = False,
) -> np.ndarray:
    """Put a 3D ``labels`` array, whose voxel index maps to LPS mm by ``affine``, on the
    voxel grid of ``reference``; returns an array of ``reference.spatial_shape``.

    The label grid must be the reference grid up to an axis permutation or flip, else
    CaseProblem(path, ...) says which of orientation, shape, spacing or origin differs
    (with sizes and distances, never the positions themselves). With ``allow_partial`` the
    label grid may cover a block of the reference grid (e.g. only the segmented slices
    of a DICOM SEG); voxels outside it are 0. When the reference has no patient geometry
    only the shapes are compared.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D, got shape {labels.shape}")
    spatial = reference.spatial_shape
    ref_shape = spatial if len(spatial) == 3 else (1, *spatial)
    ref_affine = grid_affine(reference)
    if ref_affine is None:
        if labels.shape != ref_shape:
            raise CaseProblem(
                str(path),
                f"label shape {labels.shape} differs from image shape {ref_shape} (the image "
                "has no patient geometry, so only the shapes could be compared)",
            )
        return labels.reshape(spatial)

    perm, flips, label_spacing, ref_spacing = _axis_match(affine, ref_affine, path)
    # Flip, then transpose, so that label axis a lands on reference axis perm[a].
    corner = np.where(flips, np.array(labels.shape) - 1, 0)
    data = np.flip(labels, axis=tuple(int(a) for a in np.flatnonzero(flips)))
    order = np.argsort(perm)
    data = np.transpose(data, order)
    first = (affine @ np.append(corner, 1.0))[:3]
    problems, offset = _grid_problems(
        data.shape, ref_shape, (label_spacing[order], ref_spacing), first, ref_affine, allow_partial
    )
    if problems:
        raise CaseProblem(str(path), "label does not match the image grid: " + "; ".join(problems))

    if allow_partial:
        placed = np.zeros(ref_shape, dtype=data.dtype)
        start = offset.astype(int)
        placed[
            start[0] : start[0] + data.shape[0],
            start[1] : start[1] + data.shape[1],
            start[2] : start[2] + data.shape[2],
        ] = data
        data = placed
    return np.ascontiguousarray(data).reshape(spatial)
