"""Bring one case to the model's fixed input: dimensions, channels, then size.

Without a plan (`prepare_image`, `prepare_label`), images keep their intensities as read
(the trainer z-scores each image) and sizes are matched with MONAI transforms: a centred
pad or crop (`pad-crop`, padding with the image's minimum) or an interpolating resize
(`resize`; labels with nearest neighbour). With the run's `[run.plan]` (`apply_plan`),
every site orients, resamples, crops to the non-zero region, normalises and pads as the
plan says (`consortia.common.config.plan_settings`), all with MONAI transforms.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from consortia.client.data.formats.geometry import LPS_FROM_RAS
from consortia.client.data.formats.volume import CaseProblem
from consortia.client.data.manifest import PreprocessSettings
from consortia.common.config.plan_settings import ORIENTATION_AXES, PlanSettings

__all__ = ["apply_plan", "prepare_image", "prepare_label"]

# ITU-R BT.601 luma weights: colour to grey when the model takes one channel.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _match_dims(array: np.ndarray, dims: int, where: str, channels_first: bool) -> np.ndarray:
    """Drop a single-slice depth axis for a 2D data set; refuse other mismatches."""
    spatial = array.shape[1:] if channels_first else array.shape
    if len(spatial) == dims:
        return array
    if len(spatial) == 3 and dims == 2 and spatial[0] == 1:
        return array[:, 0] if channels_first else array[0]
    if len(spatial) == 3 and dims == 2:
        raise CaseProblem(where, f"3D image with {spatial[0]} slices, but the data set is 2D")
    raise CaseProblem(where, f"{len(spatial)}D image, but the data set is {dims}D")


def _match_channels(array: np.ndarray, channels: int, where: str) -> np.ndarray:
    have = array.shape[0]
    if have == channels:
        return array
    if have == 1:
        return np.repeat(array, channels, axis=0)
    if have in (3, 4) and channels == 1:
        luma = np.tensordot(_LUMA, array[:3], axes=(0, 0))
        return np.asarray(luma, dtype=np.float32)[None]
    raise CaseProblem(where, f"image has {have} channels, the data set takes {channels}")


def _resize(
    array: np.ndarray,
    size: tuple[int, ...],
    resize: str,
    *,
    pad_value: float,
    mode: str,
    anti_aliasing: bool = False,
) -> np.ndarray:
    """(C, *spatial) `array` at `size`: a centred pad (with `pad_value`) and crop, or an
    interpolating resize with `mode`."""
    # MONAI (with torch, about 4 s) loads on the first resize, not when a node starts.
    from monai.transforms import Resize, ResizeWithPadOrCrop
    from monai.utils import convert_to_numpy

    if resize == "pad-crop":
        transform: Callable[[Any], Any] = ResizeWithPadOrCrop(size, value=pad_value)
    else:
        transform = Resize(size, mode=mode, anti_aliasing=anti_aliasing)
    return np.asarray(convert_to_numpy(transform(array)))


def prepare_image(array: np.ndarray, settings: PreprocessSettings, where: str) -> np.ndarray:
    """(C, *spatial) float32 at `settings.spatial_size` with `settings.channels` channels."""
    size = settings.spatial_size
    array = _match_dims(array, len(size), where, channels_first=True)
    array = _match_channels(array.astype(np.float32, copy=False), settings.channels, where)
    if tuple(array.shape[1:]) != size:
        array = _resize(
            array,
            size,
            settings.resize,
            pad_value=float(array.min()),
            mode="bilinear" if len(size) == 2 else "trilinear",
            anti_aliasing=any(n > s for n, s in zip(array.shape[1:], size, strict=True)),
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def _label_counts(label: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(np.rint(label).astype(np.int64), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}


def prepare_label(label: np.ndarray, settings: PreprocessSettings, where: str) -> np.ndarray:
    """A mask aligned to the image as read, (*spatial) int64 at `settings.spatial_size`;
    the same pad/crop as the image, or a nearest-neighbour resize.

    Labels are never lost silently: a crop that would cut labelled voxels, or a resize
    that would make a label vanish, is a `CaseProblem` (so `consortia data check` refuses
    the case and names the setting to change)."""
    size = settings.spatial_size
    label = _match_dims(label, len(size), where, channels_first=False)
    if tuple(label.shape) != size:
        before, shape = _label_counts(label), list(label.shape)
        label = _resize(label[None], size, settings.resize, pad_value=0, mode="nearest")[0]
        after = _label_counts(label)
        if settings.resize == "pad-crop" and after != before:
            cut = {k: before[k] - after.get(k, 0) for k in before if after.get(k, 0) != before[k]}
            raise CaseProblem(
                where,
                f"the centred crop to preprocess.spatial_size {list(size)} would cut labelled "
                f"voxels of an image of size {shape} (label: voxels cut {cut}); enlarge "
                "preprocess.spatial_size",
            )
        lost = sorted(set(before) - set(after))
        if lost:
            raise CaseProblem(
                where,
                f"resizing to preprocess.spatial_size {list(size)} would remove label(s) "
                f"{lost} entirely; enlarge preprocess.spatial_size",
            )
    return np.ascontiguousarray(np.rint(label), dtype=np.int64)


def _label_values(label: np.ndarray) -> set[int]:
    return {int(v) for v in np.unique(label) if v != 0}


def _plan_affine(
    spacing: tuple[float, ...], affine: np.ndarray | None, plan: PlanSettings, where: str
) -> np.ndarray:
    """The RAS affine MONAI reads (a 3D image needs its orientation; 2D: the spacing)."""
    if len(plan.spatial_size) == 2:
        return np.diag([*spacing, 1.0])
    if affine is None:
        raise CaseProblem(
            where,
            "the image's orientation cannot be read (no origin/direction: a PNG or npz "
            "image?); [run.plan] needs it to orient and resample 3D images",
        )
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CaseProblem(where, "the image's spacing or orientation is degenerate")
    return np.asarray(LPS_FROM_RAS @ affine, dtype=np.float64)


def _geometry(data: dict[Hashable, Any], plan: PlanSettings, where: str) -> dict[Hashable, Any]:
    """Orientation, then resampling to the plan's spacing (labels nearest), with MONAI."""
    from monai.transforms import Compose, Orientationd, Spacingd

    keys = [key for key in ("image", "label") if key in data]
    modes = ["bilinear" if key == "image" else "nearest" for key in keys]
    steps: list[Callable[[Any], Any]] = []
    if len(plan.spatial_size) == 3:
        labels = tuple((axis[0], axis[1]) for axis in ORIENTATION_AXES)
        steps.append(Orientationd(keys=keys, axcodes=plan.orientation, labels=labels))
    steps.append(Spacingd(keys=keys, pixdim=plan.target_spacing, mode=modes, padding_mode="zeros"))
    try:
        result: dict[Hashable, Any] = Compose(steps)(data)
    except (ValueError, RuntimeError) as err:  # MONAI names the problem
        raise CaseProblem(where, f"cannot orient/resample the image: {err}") from None
    return result


def _normalise(image: np.ndarray, plan: PlanSettings) -> np.ndarray:
    """MR: z-score over the non-zero voxels; CT: clip to the plan's range, z-score."""
    from monai.transforms import NormalizeIntensity

    if plan.modality == "CT":
        low, high = plan.ct_clip or (float(image.min()), float(image.max()))
        return np.asarray((np.clip(image, low, high) - plan.ct_mean) / plan.ct_std, np.float32)
    transform = NormalizeIntensity(nonzero=True, channel_wise=True)
    return np.asarray(transform(image), dtype=np.float32)


def apply_plan(
    image: np.ndarray,
    label: np.ndarray | None,
    *,
    spacing: tuple[float, ...],
    affine: np.ndarray | None,
    plan: PlanSettings,
    channels: int,
    where: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A case as read, `image` (C, *spatial) and `label` (*spatial) with its LPS grid
    `affine` (`grid_affine`), preprocessed by `plan` (`PlanSettings`): oriented,
    resampled, cropped to the non-zero region, normalised and padded to
    `plan.spatial_size`. A case the plan cannot hold, or whose labels the steps would
    lose, is a `CaseProblem` (so `consortia data check` refuses it)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import CropForegroundd
    from monai.utils import convert_to_numpy

    size = plan.spatial_size
    image = _match_dims(image, len(size), where, channels_first=True)
    image = _match_channels(image.astype(np.float32, copy=False), channels, where)
    spacing = tuple(spacing[-len(size) :])
    ras = _plan_affine(spacing, affine, plan, where)
    data: dict[Hashable, Any] = {"image": MetaTensor(image, affine=torch.as_tensor(ras))}
    before: set[int] = set()
    if label is not None:
        label = _match_dims(label, len(size), where, channels_first=False)
        before = _label_values(label)
        data["label"] = MetaTensor(label[None].astype(np.float32), affine=torch.as_tensor(ras))
    data = _geometry(data, plan, where)
    keys = [key for key in ("image", "label") if key in data]
    if plan.crop_foreground:
        crop = CropForegroundd(keys=keys, source_key="image", select_fn=_nonzero)
        data = dict(crop(data))
    out_image = np.asarray(convert_to_numpy(data["image"]), dtype=np.float32)
    out_label = None if label is None else np.rint(convert_to_numpy(data["label"]))[0]
    if out_label is not None:
        lost = sorted(before - _label_values(out_label))
        if lost:
            raise CaseProblem(
                where,
                f"[run.plan] preprocessing (resampling to {list(plan.target_spacing)} mm or "
                f"the crop to the non-zero region) would remove label(s) {lost}",
            )
    shape = tuple(int(n) for n in out_image.shape[1:])
    if any(n > s for n, s in zip(shape, size, strict=True)):
        raise CaseProblem(
            where,
            f"after [run.plan] preprocessing the image is {list(shape)} voxels, larger than "
            f"the plan's spatial_size {list(size)}: the plan does not fit this site's "
            "images (re-plan with this site's fingerprint)",
        )
    return _pad(_normalise(out_image, plan), out_label, size)


def _pad(
    image: np.ndarray, label: np.ndarray | None, size: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Image and label padded (centred, with 0) to `size`."""
    import torch
    from monai.transforms import SpatialPad
    from monai.utils import convert_to_numpy

    pad = SpatialPad(spatial_size=size, value=0)
    out = np.ascontiguousarray(convert_to_numpy(pad(torch.as_tensor(image))), dtype=np.float32)
    if label is None:
        return out, None
    return out, np.ascontiguousarray(
        convert_to_numpy(pad(torch.as_tensor(label[None])))[0], dtype=np.int64
    )


def _nonzero(array: Any) -> Any:
    """CropForeground's selector: any non-zero voxel (in any channel)."""
    return array != 0
