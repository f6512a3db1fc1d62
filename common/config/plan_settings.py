"""The preprocessing plan of a segmentation study, `[run.plan]`: part of the approved run config.

Planned from the consortium's data-set fingerprints as nnU-Net plans
(`consortia.common.config.planner`, `consortia plan`), and applied identically at every
training and held-out site (`consortia.client.data.preprocess.apply_plan`):

1. orientation to `orientation` (MONAI axis codes, e.g. ``"RAS"``);
2. resampling to `target_spacing` (mm per spatial axis after orientation; images
   trilinear, labels nearest);
3. cropping to the non-zero region of the image (`crop_foreground`);
4. intensity normalisation by `modality`: ``"MR"`` z-scores each image over its
   non-zero voxels; ``"CT"`` clips to `ct_clip` (the consortium's foreground
   percentiles) and z-scores with `ct_mean` / `ct_std`;
5. padding (never cropping) to `spatial_size`, the stored size: a case larger than it
   is refused, so no label is ever cut.

Training takes random patches of `patch_size` (a fraction `foreground_ratio` centred on
a labelled voxel) with spatial augmentation when `spatial_augment`; evaluation runs
MONAI's sliding-window inference with windows of `patch_size` over the whole stored
image, and surface distances are in mm of `target_spacing`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ORIENTATION_AXES", "PlanSettings"]

#: The letters of MONAI's axis codes, by anatomical axis (one letter of each per code).
ORIENTATION_AXES = ("LR", "PA", "IS")

_Positive = Annotated[float, Field(gt=0.0, le=100.0)]
_Size = Annotated[int, Field(ge=1, le=2048)]


class PlanSettings(BaseModel):
    """`[run.plan]`: how every site preprocesses, trains on and evaluates its images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: Literal["MR", "CT"] = "MR"
    orientation: Annotated[str, Field(pattern=r"^[LRPAIS]{3}$")] = "RAS"
    target_spacing: tuple[_Positive, ...]
    spatial_size: tuple[_Size, ...]
    patch_size: tuple[_Size, ...]
    crop_foreground: bool = True
    ct_clip: tuple[float, float] | None = None
    ct_mean: float = 0.0
    ct_std: Annotated[float, Field(gt=0.0)] = 1.0
    foreground_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.33
    spatial_augment: bool = True
    sliding_window_overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5

    @model_validator(mode="after")
    def _consistent(self) -> PlanSettings:
        dims = len(self.spatial_size)
        if dims not in (2, 3):
            raise ValueError("spatial_size must have 2 (2D) or 3 (3D) entries")
        for name in ("target_spacing", "patch_size"):
            if len(getattr(self, name)) != dims:
                raise ValueError(f"{name} must have {dims} entries, like spatial_size")
        if any(p > s for p, s in zip(self.patch_size, self.spatial_size, strict=True)):
            raise ValueError(
                f"patch_size {list(self.patch_size)} is larger than spatial_size "
                f"{list(self.spatial_size)} on some axis"
            )
        axes = sorted(
            next(i for i, axis in enumerate(ORIENTATION_AXES) if code in axis)
            for code in self.orientation
        )
        if axes != [0, 1, 2]:
            raise ValueError(
                f"orientation {self.orientation!r} must name each anatomical axis once "
                "(one of L/R, one of P/A, one of I/S), e.g. 'RAS'"
            )
        if self.modality == "CT" and self.ct_clip is None:
            raise ValueError("a CT plan needs ct_clip (and ct_mean, ct_std): run `consortia plan`")
        if self.ct_clip is not None and self.ct_clip[0] >= self.ct_clip[1]:
            raise ValueError("ct_clip must be [low, high] with low < high")
        return self
