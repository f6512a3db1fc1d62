"""The classification recipe at a site: spatial augmentation for X-ray-like images and a
class-weighted loss whose weights come from the site's own label counts.

Augmentation (`ClassificationAugmenter`, used by `BatchAugmenter` when
`TrainingSettings.augment` is on and the targets are class labels): a small random affine
(MONAI `RandAffined`: rotation up to 10 degrees, scale 0.9..1.1, shift up to 2 pixels,
border padding) before the intensity transforms, one example at a time (no mixing of
examples, so DP-SGD's clipping and accounting are unaffected). No mirroring: a chest
X-ray is not left-right symmetric (heart, aortic arch, gastric bubble; dextrocardia is a
finding of its own), and every image a site evaluates or predicts keeps the usual
orientation, so a mirrored training image is one the model never meets.

Class balance (`class_weighted_loss`): cross-entropy with scikit-learn's "balanced" class
weights ``n / (k * n_c)`` from the site's training labels (the mean weight over the site's
examples is 1, so the loss keeps its scale). The loss is the batch mean of per-example
weighted losses, the form Opacus' and our fused per-example clipping require. The counts and
weights stay at the site: they are not part of any record a site sends.

Not with sample-level DP: a weight computed from the data set makes each example's loss
depend on the other examples (adding or removing one changes ``n`` and ``n_c``), which the
DP-SGD sensitivity bound does not cover, so the run settings refuse ``class_weights =
"balanced"`` together with `[run.privacy]` (a weighted sampler would change the sampling
probability the accountant assumes, so it is no alternative).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose, RandAffined
from monai.utils import convert_to_tensor
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.nn import functional

__all__ = [
    "AFFINE_PROBABILITY",
    "MAX_ROTATION_DEGREES",
    "MAX_SHIFT_PIXELS",
    "SCALE_RANGE",
    "ClassWeightedCrossEntropy",
    "ClassificationAugmenter",
    "balanced_class_weights",
    "class_weighted_loss",
]

#: The affine's largest rotation (each direction), scale change and shift.
MAX_ROTATION_DEGREES = 10.0
SCALE_RANGE = 0.1
MAX_SHIFT_PIXELS = 2.0
#: Probability that an example gets the affine at all.
AFFINE_PROBABILITY = 0.8
_IMAGE, _LABEL = "image", "label"


class ClassificationAugmenter:
    """A random small affine, then `transforms` (`BatchAugmenter`'s dict transforms: the
    configured mirrors, then intensity), applied to each image of a batch ``(B, C, *S)``;
    seeded once (reproducible without DP)."""

    def __init__(self, transforms: Sequence[Callable[..., Any]], seed: int) -> None:
        rotation = math.radians(MAX_ROTATION_DEGREES)
        affine = RandAffined(
            keys=_IMAGE,
            prob=AFFINE_PROBABILITY,
            rotate_range=(rotation, rotation, rotation),  # a 2D image uses the first
            scale_range=(SCALE_RANGE, SCALE_RANGE, SCALE_RANGE),
            translate_range=(MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS),
            padding_mode="border",
        )
        self._compose = Compose([affine, *transforms])
        self._compose.set_random_state(seed=seed % (2**32))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augmented copies of `images`; an empty batch passes through."""
        if len(images) == 0:
            return images
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: about 4x faster, and no metadata is used
        try:
            # The image again as "label": mirrors (`flip_axes`) name both keys.
            out = [
                convert_to_tensor(self._compose({_IMAGE: x, _LABEL: x})[_IMAGE], track_meta=False)
                for x in images
            ]
        finally:
            set_track_meta(tracking)
        return torch.stack(out).float().contiguous()


def balanced_class_weights(targets: np.ndarray | torch.Tensor) -> dict[int, float]:
    """scikit-learn's "balanced" weight ``n / (k * n_c)`` of each class present in the
    site's labels `targets` (k: the number of classes present)."""
    labels = np.asarray(targets).reshape(-1)
    if labels.size == 0:
        raise ValueError("class weights need at least one training label")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError("class weights need integer class labels >= 0")
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


class ClassWeightedCrossEntropy(nn.Module):
    """Cross-entropy with one weight per class, reduced as the batch MEAN of the weighted
    per-example losses (``reduction = "none"`` returns them, as Opacus' ghost clipping
    asks). A class without a weight (absent from the site's labels) weighs 1."""

    table: torch.Tensor  # the weight of each class, from 0 to the largest one weighed

    def __init__(self, weights: dict[int, float]) -> None:
        super().__init__()
        if not weights or any(not (math.isfinite(w) and w > 0) for w in weights.values()):
            raise ValueError(f"class weights must be finite numbers > 0, got {weights}")
        table = torch.ones(max(weights) + 1)
        for label, weight in weights.items():
            table[label] = weight
        self.register_buffer("table", table, persistent=False)
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of `logits` ``(B, C)`` against class labels `targets` ``(B,)``."""
        table = self.table
        classes = logits.shape[1]
        if table.numel() > classes:
            raise ValueError(f"class weights name {table.numel()} classes, the model has {classes}")
        weight = functional.pad(table, (0, classes - table.numel()), value=1.0)
        per_example = functional.cross_entropy(
            logits, targets, weight=weight.to(logits.device, logits.dtype), reduction="none"
        )
        return per_example if self.reduction == "none" else per_example.mean()


def class_weighted_loss(targets: np.ndarray | torch.Tensor) -> ClassWeightedCrossEntropy:
    """The class-balanced training loss of a site whose training labels are `targets`."""
    return ClassWeightedCrossEntropy(balanced_class_weights(targets))
