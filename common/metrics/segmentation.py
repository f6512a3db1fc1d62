"""Segmentation metrics (MONAI Dice, IoU, HD95, ASD) as sums and counts per site.
See `consortia.common.metrics.exact`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from monai.metrics.hausdorff_distance import compute_hausdorff_distance
from monai.metrics.meandice import compute_dice
from monai.metrics.meaniou import compute_iou
from monai.metrics.surface_distance import compute_average_surface_distance
from monai.networks.utils import one_hot

from consortia.common.metrics.base import (
    ASD,
    ASD_COUNT,
    ASD_SUM,
    ASD_UNDEFINED,
    CASES,
    DICE,
    DICE_COUNT,
    DICE_SUM,
    HD95,
    HD95_COUNT,
    HD95_SUM,
    HD95_UNDEFINED,
    IOU,
    IOU_COUNT,
    IOU_SUM,
    Spacing,
    check_int,
    check_labels,
    class_dice_count_key,
    class_dice_key,
    class_dice_sum_key,
    ratio,
)

__all__ = [
    "SegmentationMetricAccumulator",
    "compute_segmentation_summary",
    "finalize_segmentation",
]

_EMPTY_SURFACE_WARNING = r".*this may result in nan/inf distance.*"


class SegmentationMetricAccumulator:
    """Accumulates Dice, IoU, HD95 and ASD sums and counts over cases (see module docstring).

    Args:
        num_classes: number of labels including background (at least 2).
        include_background: also evaluate label 0.
        spacing: voxel spacing for the surface distances (one number or one per axis);
            ``None`` means unit spacing.
        surface_distances: compute HD95 and ASD (distance transforms: the costly part);
            when False their sums and counts stay 0, so they finalize to NaN.
    """

    def __init__(
        self,
        num_classes: int,
        include_background: bool = False,
        spacing: Spacing = None,
        surface_distances: bool = True,
    ) -> None:
        check_int("num_classes", num_classes, 2)
        if not isinstance(include_background, bool):
            raise TypeError("include_background must be a bool")
        if spacing is not None:
            values = [spacing] if isinstance(spacing, int | float) else list(spacing)
            if not values or not all(isinstance(v, int | float) and v > 0 for v in values):
                raise ValueError(f"spacing must be positive numbers, got {spacing!r}")
        self.num_classes = num_classes
        self.include_background = include_background
        self.spacing = spacing
        self.surface_distances = surface_distances
        self._first_label = 0 if include_background else 1
        self.reset()

    def reset(self) -> None:
        """Forget every case seen so far."""
        self._cases = 0
        self._values: dict[str, list[float]] = {DICE: [], IOU: [], HD95: [], ASD: []}
        self._undefined = {HD95: 0, ASD: 0}
        self._per_case: dict[str, list[float]] = {DICE: [], IOU: []}
        self._class_dice: dict[int, list[float]] = {
            label: [] for label in range(self._first_label, self.num_classes)
        }

    def update(self, pred_labels: torch.Tensor, target_labels: torch.Tensor) -> None:
        """Add a batch of label maps, shape ``(B, H, W)`` or ``(B, D, H, W)``, integer dtype."""
        pred = check_labels("pred_labels", pred_labels, self.num_classes)
        target = check_labels("target_labels", target_labels, self.num_classes)
        if pred.shape != target.shape:
            raise ValueError(
                f"pred_labels shape {tuple(pred.shape)} != target_labels shape "
                f"{tuple(target.shape)}"
            )
        if pred.ndim not in (3, 4):
            raise ValueError(f"pred_labels must be (B, H, W) or (B, D, H, W), got {pred.ndim}D")
        if pred.shape[0] == 0:
            return
        pred_1h = one_hot(pred.unsqueeze(1), self.num_classes, dtype=torch.float64)
        target_1h = one_hot(target.unsqueeze(1), self.num_classes, dtype=torch.float64)
        spatial = tuple(range(2, pred_1h.ndim))
        first = self._first_label
        pred_present = pred_1h.sum(dim=spatial)[:, first:] > 0
        target_present = target_1h.sum(dim=spatial)[:, first:] > 0
        both_empty = ~pred_present & ~target_present
        one_empty = pred_present ^ target_present
        nan = torch.tensor(float("nan"), dtype=torch.float64)

        dice = compute_dice(pred_1h, target_1h, self.include_background, ignore_empty=False)
        iou = compute_iou(pred_1h, target_1h, self.include_background, ignore_empty=False)
        dice = torch.where(both_empty, nan, dice.double())
        iou = torch.where(both_empty, nan, iou.double())
        surfaces: dict[int, tuple[tuple[str, torch.Tensor], ...]] = {}
        if self.surface_distances:
            hd, asd = self._surface_distances(pred_1h, target_1h)
            surfaces = {case: ((HD95, hd[case]), (ASD, asd[case])) for case in range(len(hd))}

        for case in range(pred.shape[0]):
            self._cases += 1
            self._add_mean(DICE, dice[case])
            self._add_mean(IOU, iou[case])
            for key, values in surfaces.get(case, ()):
                valid = ~both_empty[case]
                if bool((one_empty[case] | (valid & ~torch.isfinite(values))).any()):
                    self._undefined[key] += 1
                else:
                    self._add_mean(key, torch.where(valid, values, nan))
            for offset, label in enumerate(range(first, self.num_classes)):
                value = float(dice[case, offset])
                if not math.isnan(value):
                    self._class_dice[label].append(value)

    def _surface_distances(
        self, pred_1h: torch.Tensor, target_1h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_EMPTY_SURFACE_WARNING)
            # MONAI 1.5/1.6 pass a deprecated argument to their own get_mask_edges.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            hd = compute_hausdorff_distance(
                pred_1h,
                target_1h,
                self.include_background,
                percentile=95,
                spacing=self.spacing,
            ).double()
            asd = compute_average_surface_distance(
                pred_1h,
                target_1h,
                self.include_background,
                symmetric=True,
                spacing=self.spacing,
            ).double()
        return hd, asd

    def _add_mean(self, key: str, per_class: torch.Tensor) -> None:
        value = float("nan") if bool(torch.isnan(per_class).all()) else None
        if value is None:
            value = float(torch.nanmean(per_class))
            self._values[key].append(value)
        if key in self._per_case:
            self._per_case[key].append(value)

    def case_values(self) -> dict[str, np.ndarray]:
        """Dice and IoU per case seen, NaN where undefined: for bootstrap replicates made
        at the site (`consortia.common.metrics.bootstrap`); never to be sent."""
        return {key: np.asarray(values, dtype=np.float64) for key, values in self._per_case.items()}

    def summary(self) -> dict[str, float]:
        """Sums and counts only (never means), ready for :func:`combine`."""
        result: dict[str, float] = {CASES: float(self._cases)}
        for key, sum_key, count_key in (
            (DICE, DICE_SUM, DICE_COUNT),
            (IOU, IOU_SUM, IOU_COUNT),
            (HD95, HD95_SUM, HD95_COUNT),
            (ASD, ASD_SUM, ASD_COUNT),
        ):
            result[sum_key] = math.fsum(self._values[key])
            result[count_key] = float(len(self._values[key]))
        result[HD95_UNDEFINED] = float(self._undefined[HD95])
        result[ASD_UNDEFINED] = float(self._undefined[ASD])
        for label, values in self._class_dice.items():
            result[class_dice_sum_key(label)] = math.fsum(values)
            result[class_dice_count_key(label)] = float(len(values))
        return result


def compute_segmentation_summary(
    pred_labels: torch.Tensor,
    target_labels: torch.Tensor,
    num_classes: int,
    include_background: bool = False,
    spacing: Spacing = None,
) -> dict[str, float]:
    """Functional form of :class:`SegmentationMetricAccumulator` for one batch."""
    accumulator = SegmentationMetricAccumulator(num_classes, include_background, spacing)
    accumulator.update(pred_labels, target_labels)
    return accumulator.summary()


def finalize_segmentation(combined: Mapping[str, float]) -> dict[str, float]:
    """Means from combined sums/counts: ``dice``, ``iou``, ``hd95``, ``asd``, ``dice_c{k}``.

    Means are NaN when their count is 0; ``cases``, ``hd95_undefined`` and
    ``asd_undefined`` are passed through.
    """
    for key in (
        DICE_SUM,
        DICE_COUNT,
        IOU_SUM,
        IOU_COUNT,
        HD95_SUM,
        HD95_COUNT,
        ASD_SUM,
        ASD_COUNT,
    ):
        if key not in combined:
            raise ValueError(f"combined is missing the key {key!r}")
    result = {
        DICE: ratio(combined[DICE_SUM], combined[DICE_COUNT]),
        IOU: ratio(combined[IOU_SUM], combined[IOU_COUNT]),
        HD95: ratio(combined[HD95_SUM], combined[HD95_COUNT]),
        ASD: ratio(combined[ASD_SUM], combined[ASD_COUNT]),
    }
    for key in (CASES, HD95_UNDEFINED, ASD_UNDEFINED):
        result[key] = float(combined.get(key, 0.0))
    prefix = f"{DICE_SUM}_c"
    for key in combined:
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            label = int(key[len(prefix) :])
            count = combined.get(class_dice_count_key(label), 0.0)
            result[class_dice_key(label)] = ratio(combined[key], count)
    return result
