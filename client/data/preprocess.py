"""Bring one case to the model's fixed input: dimensions, channels, then size.

Images keep their intensities as read (the trainer z-scores each image). Sizes are
matched with MONAI transforms: a centred pad or crop (`pad-crop`, padding with the
image's minimum) or an interpolating resize (`resize`; labels with nearest neighbour).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from consortia.client.data.formats.volume import CaseProblem
from consortia.client.data.manifest import PreprocessSettings

__all__ = ["prepare_image", "prepare_label"]

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
