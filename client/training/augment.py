"""Data augmentation of a training batch, with MONAI's random transforms.

Applied to each example on its own (so it never mixes examples: DP-SGD's per-example
clipping and the accountant are unaffected; one case still gives one example), after
the per-image z-score:

- a patch (`[run.plan]` `patch_size`): one random patch per case, centred on a labelled
  voxel with probability `foreground_ratio` (MONAI `RandCropByPosNegLabeld`, nnU-Net's
  foreground oversampling), then, with `spatial_augment`, a random rotation (up to 15
  degrees about each axis) and scaling (0.85..1.15) (`RandAffined`, labels nearest);

- intensity (`TrainingSettings.augment`): a random gamma curve (MONAI `RandAdjustContrastd`,
  gamma 0.7..1.5), a random intensity scale and shift, Gaussian noise and, rarely, a
  Gaussian blur: the kinds of acquisition differences between hospitals (and between the
  simulated sites of docs/data.md);
- mirroring (`TrainingSettings.flip_axes`): flips along the given spatial axes (0 = the
  first spatial axis), image and label together. Off by default: a mirror can swap the
  meaning of labels (left/right, anterior/posterior) in data sets that depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.utils import convert_to_tensor

from consortia.client.training.classification_recipe import ClassificationAugmenter

__all__ = ["BatchAugmenter"]

_IMAGE, _LABEL = "image", "label"


def _patch(patch_size: Sequence[int], foreground_ratio: float) -> RandCropByPosNegLabeld:
    """One random patch per case; centred on a labelled voxel with `foreground_ratio`."""
    return RandCropByPosNegLabeld(
        keys=(_IMAGE, _LABEL),
        label_key=_LABEL,
        spatial_size=tuple(patch_size),
        pos=foreground_ratio,
        neg=1.0 - foreground_ratio,
        num_samples=1,
        allow_smaller=True,
    )


def _affine(dims: int) -> Callable[..., Any]:
    """A random rotation and scaling of image and label (labels nearest)."""
    angle = 15 * 3.141592653589793 / 180
    return RandAffined(
        keys=(_IMAGE, _LABEL),
        prob=0.2,
        rotate_range=(angle,) * (3 if dims == 3 else 1),
        scale_range=(0.15,) * dims,
        mode=("bilinear", "nearest"),
        padding_mode="zeros",
    )


class BatchAugmenter:
    """Random per-example transforms, seeded once per round (reproducible without DP)."""

    def __init__(
        self,
        *,
        intensity: bool,
        flip_axes: Sequence[int],
        seed: int,
        patch_size: Sequence[int] | None = None,
        foreground_ratio: float = 0.33,
        spatial: bool = False,
    ) -> None:
        transforms: list[Callable[..., Any]] = []
        self._crop = None if patch_size is None else _patch(patch_size, foreground_ratio)
        if self._crop is not None:
            self._crop.set_random_state(seed=(seed + 1) % (2**32))
        if spatial:
            transforms.append(_affine(len(patch_size or (0, 0, 0))))
        for axis in flip_axes:
            transforms.append(RandFlipd(keys=(_IMAGE, _LABEL), prob=0.5, spatial_axis=axis))
        if intensity:
            transforms += [
                RandAdjustContrastd(keys=_IMAGE, prob=0.3, gamma=(0.7, 1.5)),
                RandScaleIntensityd(keys=_IMAGE, factors=0.15, prob=0.3),
                RandShiftIntensityd(keys=_IMAGE, offsets=0.1, prob=0.3),
                RandGaussianNoised(keys=_IMAGE, prob=0.15, std=0.1),
                RandGaussianSmoothd(
                    keys=_IMAGE,
                    prob=0.1,
                    sigma_x=(0.5, 1.0),
                    sigma_y=(0.5, 1.0),
                    sigma_z=(0.5, 1.0),
                ),
            ]
        self.active = bool(transforms) or self._crop is not None
        self._compose = Compose(transforms) if transforms else None
        # Class labels with intensity on: the classification recipe (affine, then these).
        self._classes = ClassificationAugmenter(transforms, seed) if intensity else None
        if self._compose is not None:
            self._compose.set_random_state(seed=seed % (2**32))

    def _patches(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One random patch of every case (image and mask together)."""
        crop = self._crop
        if crop is None:
            return images, targets
        out_images, out_targets = [], []
        for image, label in zip(images, targets, strict=True):
            patch = crop({_IMAGE: image, _LABEL: label})[0]
            out_images.append(convert_to_tensor(patch[_IMAGE], track_meta=False).float())
            out_targets.append(convert_to_tensor(patch[_LABEL], track_meta=False).to(label.dtype))
        return torch.stack(out_images).contiguous(), torch.stack(out_targets).contiguous()

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented copies of `images` (B, C, *S) and, for segmentation, `targets`
        (B, 1, *S); class targets (B,) pass through (only intensity changes apply)."""
        masks = targets.ndim == images.ndim
        if masks and self._crop is not None and len(images):
            images, targets = self._patches(images, targets)
        if self._compose is None or len(images) == 0:
            return images, targets
        if not masks and self._classes is not None:
            return self._classes(images), targets
        out_images, out_targets = [], []
        for index in range(len(images)):
            item = {_IMAGE: images[index], _LABEL: targets[index] if masks else images[index]}
            result = self._compose(item)
            out_images.append(convert_to_tensor(result[_IMAGE], track_meta=False).float())
            if masks:
                label = convert_to_tensor(result[_LABEL], track_meta=False)
                out_targets.append(label.to(targets.dtype))
        augmented = torch.stack(out_images).contiguous()
        if not masks:
            return augmented, targets
        return augmented, torch.stack(out_targets).contiguous()
