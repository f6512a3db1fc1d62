"""A site's data-set fingerprint for the planner: aggregate statistics only.

`consortia data fingerprint` writes it.

Every case that passes the checks is read as training reads it (without the run's plan),
oriented to the plan's orientation with MONAI, and measured: its voxel spacing, the
extent of its non-zero region in mm, and its intensities over labelled voxels (at most
`SAMPLES_PER_CASE` of them, drawn with a fixed seed, as nnU-Net samples). What leaves the
site is `consortia.common.config.planner.Fingerprint`: medians, the largest extent
rounded up to whole `EXTENT_ROUNDING_MM`, pooled intensity statistics and the case count;
no path, no file name and no per-case value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from consortia.client.data.dataset import SiteDataset
from consortia.client.data.formats.geometry import LPS_FROM_RAS, grid_affine
from consortia.client.data.formats.volume import CaseProblem
from consortia.client.data.reader import CaseReader
from consortia.common.config.plan_settings import ORIENTATION_AXES
from consortia.common.config.planner import (
    EXTENT_ROUNDING_MM,
    Fingerprint,
    IntensityStats,
)
from consortia.common.errors import DataError

__all__ = ["SAMPLES_PER_CASE", "dataset_fingerprint"]

logger = logging.getLogger("consortia.client.data.fingerprint")

SAMPLES_PER_CASE = 10_000


def _oriented(
    image: np.ndarray, affine: np.ndarray | None, spacing: tuple[float, ...], orientation: str
) -> tuple[np.ndarray, tuple[float, ...]]:
    """The image in `orientation` and its spacing (2D images: as read)."""
    if image.ndim == 3:  # (C, H, W)
        return image, spacing
    if affine is None:
        raise CaseProblem("(image)", "the image's orientation cannot be read")
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    labels = tuple((axis[0], axis[1]) for axis in ORIENTATION_AXES)
    oriented = Orientation(axcodes=orientation, labels=labels)(
        MetaTensor(image, affine=torch.as_tensor(LPS_FROM_RAS @ affine))
    )
    if not isinstance(oriented, MetaTensor):
        raise CaseProblem("(image)", "the image could not be oriented")
    pixdim = tuple(float(s) for s in oriented.pixdim)
    return np.asarray(oriented.numpy()), pixdim


def _extent(image: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, ...]:
    """The non-zero region's size in mm (the whole image when it has no zero voxel)."""
    nonzero = np.argwhere(np.any(image != 0, axis=0))
    if len(nonzero) == 0:
        shape = image.shape[1:]
    else:
        shape = tuple(nonzero.max(axis=0) - nonzero.min(axis=0) + 1)
    return tuple(float(n) * s for n, s in zip(shape, spacing, strict=True))


def _round_up_mm(value: float) -> float:
    return float(np.ceil(value / EXTENT_ROUNDING_MM) * EXTENT_ROUNDING_MM)


def dataset_fingerprint(
    path: Path,
    *,
    orientation: str = "RAS",
    on_case: Callable[[int, int], None] | None = None,
) -> Fingerprint:
    """The fingerprint of the data set a manifest describes; `DataError` when no case
    can be read. Cases that fail the checks are left out (see `consortia data check`)."""
    dataset = SiteDataset.open(path)
    manifest = dataset.manifest.manifest
    reader = CaseReader(
        manifest.dataset.task,
        None,
        simulation=manifest.simulation,
        modalities=manifest.dataset.modalities,
        label_names=manifest.dataset.labels,
    )
    rng = np.random.default_rng(0)
    spacings: list[tuple[float, ...]] = []
    extents: list[tuple[float, ...]] = []
    samples: list[np.ndarray] = []
    for done, case in enumerate(dataset.cases, start=1):
        try:
            data = reader.read(case)
            image, spacing = _oriented(
                data.image, grid_affine(data.volume), data.volume.spacing, orientation
            )
        except CaseProblem as problem:
            logger.debug("case %s left out of the fingerprint: %s", case.id, problem.reason)
            continue
        spacings.append(spacing)
        extents.append(_extent(image, spacing))
        if isinstance(data.target, np.ndarray):
            values = data.image[:, data.target > 0].reshape(-1)
            if len(values) > SAMPLES_PER_CASE:
                values = rng.choice(values, SAMPLES_PER_CASE, replace=False)
            samples.append(values.astype(np.float64))
        if on_case is not None:
            on_case(done, len(dataset.cases))
    if not spacings:
        raise DataError(f"{path}: no readable case to fingerprint (see `consortia data check`)")
    pooled = np.concatenate(samples) if samples else np.zeros(0)
    intensity = IntensityStats(
        voxels=len(pooled),
        mean=float(pooled.mean()) if len(pooled) else 0.0,
        std=float(pooled.std()) if len(pooled) else 0.0,
        p00_5=float(np.percentile(pooled, 0.5)) if len(pooled) else 0.0,
        p99_5=float(np.percentile(pooled, 99.5)) if len(pooled) else 0.0,
    )
    return Fingerprint(
        orientation=orientation,
        cases=len(spacings),
        median_spacing=tuple(float(v) for v in np.median(spacings, axis=0)),
        median_extent_mm=tuple(float(v) for v in np.median(extents, axis=0)),
        max_extent_mm=tuple(_round_up_mm(v) for v in np.max(extents, axis=0)),
        intensity=intensity,
    )
