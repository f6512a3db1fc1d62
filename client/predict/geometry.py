"""Take a prediction made on the model's grid back to the input image's own voxel grid.

The forward geometry is replayed with the same MONAI transforms as the preprocessing
(`consortia.client.data.preprocess`): a centred pad/crop or resize to `[preprocess]`
`spatial_size`, or, with the run's `[run.plan]`, orientation, resampling, the crop to
the non-zero region and the pad to the stored size. The transforms record what they did
(`MetaTensor.applied_operations`) and MONAI's own `inverse` undoes it on the class
probabilities, so a mask lands where the image was, whatever was padded or cropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    InvertibleTransform,
    Orientationd,
    Resize,
    ResizeWithPadOrCrop,
    Spacingd,
    SpatialPadd,
)

from consortia.client.data.formats.geometry import LPS_FROM_RAS, grid_affine
from consortia.client.data.formats.volume import CaseProblem, ImageVolume
from consortia.client.data.manifest import PreprocessSettings
from consortia.common.config.plan_settings import ORIENTATION_AXES, PlanSettings

__all__ = ["model_grid_shape", "to_input_grid"]


def model_grid_shape(volume: ImageVolume, dims: int, where: str) -> tuple[int, ...]:
    """The input's spatial shape as a `dims`-D model sees it (a 2D model: a single-slice
    depth axis dropped); CaseProblem when the dimensions do not fit."""
    shape = volume.spatial_shape
    if len(shape) == 3 and dims == 2 and shape[0] == 1:
        return shape[1:]
    if len(shape) == 3 and dims == 2:
        raise CaseProblem(where, f"3D image with {shape[0]} slices, but the model is 2D")
    if len(shape) != dims:
        raise CaseProblem(where, f"{len(shape)}D image, but the model is {dims}D")
    return shape


def _size_transform(settings: PreprocessSettings) -> InvertibleTransform:
    """The MONAI transform `prepare_image` fits sizes with."""
    if settings.resize == "pad-crop":
        return ResizeWithPadOrCrop(settings.spatial_size)
    mode = "bilinear" if len(settings.spatial_size) == 2 else "trilinear"
    return Resize(settings.spatial_size, mode=mode)


def _nonzero(array: Any) -> Any:
    return array != 0


def _plan_steps(plan: PlanSettings) -> Compose:
    steps: list[Any] = []
    if len(plan.spatial_size) == 3:
        labels = tuple((axis[0], axis[1]) for axis in ORIENTATION_AXES)
        steps.append(Orientationd(keys="image", axcodes=plan.orientation, labels=labels))
    steps.append(Spacingd(keys="image", pixdim=plan.target_spacing, padding_mode="zeros"))
    if plan.crop_foreground:
        steps.append(
            CropForegroundd(
                keys="image", source_key="image", select_fn=_nonzero, allow_smaller=True
            )
        )
    steps.append(SpatialPadd(keys="image", spatial_size=plan.spatial_size, value=0))
    return Compose(steps)


def _plan_inverse(
    probabilities: torch.Tensor, volume: ImageVolume, plan: PlanSettings, where: str
) -> torch.Tensor:
    dims = len(plan.spatial_size)
    shape = model_grid_shape(volume, dims, where)
    image = volume.array.reshape(volume.array.shape[0], *shape)
    if dims == 2:
        affine = np.diag([*volume.spacing[-2:], 1.0])
    else:
        lps = grid_affine(volume)
        if lps is None:
            raise CaseProblem(where, "the image's orientation cannot be read for [run.plan]")
        affine = LPS_FROM_RAS @ lps
    steps = _plan_steps(plan)
    probe = steps({"image": MetaTensor(torch.from_numpy(image), affine=torch.as_tensor(affine))})[
        "image"
    ]
    if tuple(probe.shape[1:]) != tuple(probabilities.shape[1:]):
        raise CaseProblem(where, "the plan's geometry could not be replayed on the prediction")
    traced = MetaTensor(
        probabilities, affine=probe.affine, applied_operations=probe.applied_operations
    )
    return torch.as_tensor(steps.inverse({"image": traced})["image"])


def to_input_grid(
    probabilities: torch.Tensor,
    volume: ImageVolume,
    *,
    preprocess: PreprocessSettings | None,
    plan: PlanSettings | None,
    where: str,
) -> torch.Tensor:
    """Class probabilities (K, *model grid) on the input's grid (K, *model_grid_shape)."""
    if plan is not None:
        return _plan_inverse(probabilities, volume, plan, where)
    if preprocess is None:
        raise CaseProblem(where, "the model's card has neither [preprocess] nor a plan")
    shape = model_grid_shape(volume, len(preprocess.spatial_size), where)
    if tuple(probabilities.shape[1:]) == shape:
        return probabilities
    transform = _size_transform(preprocess)
    probe = transform(MetaTensor(torch.zeros(1, *shape)))  # records the forward geometry
    traced = MetaTensor(probabilities, applied_operations=probe.applied_operations)
    return torch.as_tensor(transform.inverse(traced))
