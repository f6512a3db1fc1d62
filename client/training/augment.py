"""Data augmentation of a training batch, with MONAI's random transforms.

Applied to each example on its own (so it never mixes examples: DP-SGD's per-example
clipping and the accountant are unaffected), after the per-image z-score:

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
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.utils import convert_to_tensor

__all__ = ["BatchAugmenter"]

_IMAGE, _LABEL = "image", "label"


class BatchAugmenter:
    """Random per-example transforms, seeded once per round (reproducible without DP)."""

    def __init__(self, *, intensity: bool, flip_axes: Sequence[int], seed: int) -> None:
        transforms: list[Callable[..., Any]] = []
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
        self.active = bool(transforms)
        self._compose = Compose(transforms) if transforms else None
        if self._compose is not None:
            self._compose.set_random_state(seed=seed % (2**32))

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented copies of `images` (B, C, *S) and, for segmentation, `targets`
        (B, 1, *S); class targets (B,) pass through (only intensity changes apply)."""
        if self._compose is None or len(images) == 0:
            return images, targets
        masks = targets.ndim == images.ndim
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
