"""One image as every reader returns it: voxels plus the geometry needed to align labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from consortia.common.errors import DataError

__all__ = ["CaseProblem", "ImageVolume"]


@dataclass(frozen=True)
class ImageVolume:
    """An image read from DICOM, NIfTI, PNG or npz.

    ``array`` is float32, channels first: ``(C, H, W)`` for 2D, ``(C, D, H, W)`` for 3D,
    where D runs along the slice normal (DICOM: sorted by position). ``spacing`` is in mm
    in the order of the spatial axes. ``origin`` is the patient-space position of the
    first voxel and ``direction`` a 3x3 matrix whose rows are the patient-space unit
    vectors (LPS for DICOM) of increasing W index (along a row), increasing H index
    (down a column) and increasing D index (along the slice normal), when known.
    ``modality`` and ``manufacturer`` stay at the site: they are shown by
    `consortia data check` and never sent to the server or logged off-site.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, float, float] | None = None
    direction: np.ndarray | None = None
    modality: str | None = None
    manufacturer: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim not in (3, 4):
            raise ValueError(f"array must be (C,H,W) or (C,D,H,W), got {self.array.shape}")
        if len(self.spacing) != self.array.ndim - 1:
            raise ValueError(
                f"spacing {self.spacing} does not match spatial shape {self.array.shape[1:]}"
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape[1:])


class CaseProblem(DataError):  # noqa: N818 - also a report item, not only an error
    """Why one case (or one file) cannot be used; `path` is local to the site and is
    never sent to the server."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
