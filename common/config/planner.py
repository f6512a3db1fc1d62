"""The segmentation planner: from the sites' fingerprints to a `[run.plan]`, as nnU-Net plans.

A site's `Fingerprint` (`consortia data fingerprint`) holds aggregate statistics only:
case count, median voxel spacing and median non-zero extent, the largest non-zero extent
rounded up to whole `EXTENT_ROUNDING_MM`, and intensity statistics over the labelled
(foreground) voxels of all its cases pooled (mean, standard deviation, 0.5th and 99.5th
percentiles, voxel count). No path, file name or per-case value is in it.

`merge_fingerprints` combines the sites' fingerprints: medians as case-weighted means of
the sites' medians, extents as the maximum, mean and standard deviation exactly (pooled
over voxels), percentiles as voxel-weighted means of the sites' percentiles (an
approximation of the pooled percentiles, which no site can compute alone).
`plan_from_fingerprint` derives the plan the way nnU-Net does: target spacing = the
median spacing; stored size = the largest extent at that spacing, rounded up to a
multiple of `divisor` (the network's total down-sampling); patch size = the median
extent rounded up the same way (capped at the stored size); for CT the intensity clip
and z-score come from the foreground statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from consortia.common.config.plan_settings import PlanSettings

__all__ = [
    "EXTENT_ROUNDING_MM",
    "FINGERPRINT_FORMAT",
    "Fingerprint",
    "IntensityStats",
    "merge_fingerprints",
    "plan_from_fingerprint",
    "plan_toml",
]

FINGERPRINT_FORMAT = 1
#: A site's largest extent is rounded up to a multiple of this many mm before it leaves.
EXTENT_ROUNDING_MM = 4.0


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntensityStats(_Frozen):
    """Intensity over the labelled voxels of a data set's cases, pooled."""

    voxels: Annotated[int, Field(ge=0)]
    mean: float
    std: Annotated[float, Field(ge=0.0)]
    p00_5: float
    p99_5: float


class Fingerprint(_Frozen):
    """One data set's (or the consortium's merged) aggregate statistics, in the plan's
    orientation: no path, no per-case value."""

    format: Literal[1] = 1  # FINGERPRINT_FORMAT
    orientation: str
    cases: Annotated[int, Field(ge=1)]
    median_spacing: tuple[Annotated[float, Field(gt=0.0)], ...]
    median_extent_mm: tuple[Annotated[float, Field(gt=0.0)], ...]
    max_extent_mm: tuple[Annotated[float, Field(gt=0.0)], ...]
    intensity: IntensityStats

    @model_validator(mode="after")
    def _same_dims(self) -> Fingerprint:
        dims = {len(self.median_spacing), len(self.median_extent_mm), len(self.max_extent_mm)}
        if len(dims) != 1 or dims.pop() not in (2, 3):
            raise ValueError("spacing and extents must all have 2 or 3 entries")
        return self


def _weighted(values: Sequence[Sequence[float]], weights: Sequence[float]) -> tuple[float, ...]:
    total = float(sum(weights))
    return tuple(
        sum(w * v[axis] for v, w in zip(values, weights, strict=True)) / total
        for axis in range(len(values[0]))
    )


def merge_fingerprints(prints: Sequence[Fingerprint]) -> Fingerprint:
    """The consortium's fingerprint from every site's (see the module docstring)."""
    if not prints:
        raise ValueError("no fingerprint to plan from")
    orientations = {p.orientation for p in prints}
    if len(orientations) != 1:
        raise ValueError(f"fingerprints in different orientations: {sorted(orientations)}")
    if len({len(p.median_spacing) for p in prints}) != 1:
        raise ValueError("fingerprints of 2D and 3D data sets cannot be merged")
    cases = [float(p.cases) for p in prints]
    voxels = [float(p.intensity.voxels) for p in prints]
    total = sum(voxels)
    if total > 0:
        mean = sum(v * p.intensity.mean for v, p in zip(voxels, prints, strict=True)) / total
        second = sum(
            v * (p.intensity.std**2 + p.intensity.mean**2)
            for v, p in zip(voxels, prints, strict=True)
        )
        std = math.sqrt(max(second / total - mean**2, 0.0))
        low = sum(v * p.intensity.p00_5 for v, p in zip(voxels, prints, strict=True)) / total
        high = sum(v * p.intensity.p99_5 for v, p in zip(voxels, prints, strict=True)) / total
    else:
        mean, std, low, high = 0.0, 1.0, 0.0, 0.0
    return Fingerprint(
        orientation=prints[0].orientation,
        cases=int(sum(cases)),
        median_spacing=_weighted([p.median_spacing for p in prints], cases),
        median_extent_mm=_weighted([p.median_extent_mm for p in prints], cases),
        max_extent_mm=tuple(
            max(p.max_extent_mm[axis] for p in prints)
            for axis in range(len(prints[0].max_extent_mm))
        ),
        intensity=IntensityStats(voxels=int(total), mean=mean, std=std, p00_5=low, p99_5=high),
    )


def _round_up(value: float, divisor: int) -> int:
    return max(divisor, math.ceil(value / divisor - 1e-6) * divisor)


def plan_from_fingerprint(
    fingerprint: Fingerprint,
    *,
    modality: Literal["MR", "CT"],
    divisor: int = 8,
    crop_foreground: bool = True,
) -> PlanSettings:
    """The plan for a (merged) fingerprint; `divisor`: the network's total down-sampling
    (2 ** number of strided levels), which every size must divide."""
    if divisor < 1:
        raise ValueError("divisor must be >= 1")
    spacing = tuple(round(s, 4) for s in fingerprint.median_spacing)
    size = tuple(
        _round_up(extent / s, divisor)
        for extent, s in zip(fingerprint.max_extent_mm, spacing, strict=True)
    )
    patch = tuple(
        min(_round_up(extent / s, divisor), limit)
        for extent, s, limit in zip(fingerprint.median_extent_mm, spacing, size, strict=True)
    )
    stats = fingerprint.intensity
    ct = modality == "CT"
    if ct and (stats.voxels == 0 or stats.p99_5 <= stats.p00_5):
        raise ValueError("a CT plan needs foreground intensity statistics (labelled voxels)")
    return PlanSettings(
        modality=modality,
        orientation=fingerprint.orientation,
        target_spacing=spacing,
        spatial_size=size,
        patch_size=patch,
        crop_foreground=crop_foreground,
        ct_clip=(stats.p00_5, stats.p99_5) if ct else None,
        ct_mean=stats.mean if ct else 0.0,
        ct_std=max(stats.std, 1e-6) if ct else 1.0,
    )


def plan_toml(plan: PlanSettings) -> str:
    """`[run.plan]` as TOML text, to paste into (or include in) a run config."""
    lines = ["[run.plan]"]
    for key, value in plan.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = f'"{value}"'
        elif isinstance(value, list):
            text = "[" + ", ".join(repr(v) for v in value) + "]"
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
