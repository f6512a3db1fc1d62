"""The arrays training uses, and the legacy MedMNIST-v2 style ``.npz`` data set.

A legacy data set is one ``.npz`` with ``{split}_images`` and ``{split}_labels`` arrays,
plus ``{split}_masks`` for segmentation (the built-in demo data uses exactly this layout).
Manifest-described data sets (DICOM, NIfTI, PNG, npz cases) are read by
`consortia.client.data.dataset.SiteDataset`, which also opens legacy files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from consortia.common.config.plan_settings import PlanSettings
from consortia.common.config.settings import Task
from consortia.common.errors import DataError
from consortia.common.files import sha256_file

__all__ = ["SPLITS", "SiteArrays", "data_fingerprint", "load_npz_splits"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SiteArrays:
    """Images as float32 (N, C, *spatial); targets as int64 masks (N, *spatial) or class
    labels (N,). Legacy npz images are in [0, 1]; manifest data sets keep intensities as
    read (the trainer normalises each image), or are preprocessed by the run's `plan`
    (then at its `spatial_size` and `target_spacing`, which evaluation uses)."""

    images: np.ndarray
    targets: np.ndarray
    plan: PlanSettings | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def data_fingerprint(path: Path) -> str:
    """SHA-256 of the data file's bytes: identifies the data set without revealing it."""
    return sha256_file(path)


def _as_channels_first(images: np.ndarray, name: str) -> np.ndarray:
    if images.ndim == 3:  # (N, H, W) grey 2D
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (3, 4):  # (N, H, W, C) colour 2D
        images = np.moveaxis(images, -1, 1)
    elif images.ndim == 4:  # (N, D, H, W) grey 3D
        images = images[:, None]
    else:
        raise DataError(f"{name}: images must be (N,H,W), (N,H,W,C) or (N,D,H,W)")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return (images.astype(np.float32) / scale).copy()


def load_npz_splits(path: Path, task: Task, splits: Sequence[str]) -> SiteArrays:
    """Concatenate the given splits of an npz data set; errors name the file and the key."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s): {sorted(unknown)}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path.name}: not a readable npz file: {err}") from None
    images: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    with archive:
        for split in splits:
            image_key = f"{split}_images"
            if image_key not in archive.files:
                continue
            target_key = f"{split}_masks" if task is Task.SEGMENTATION else f"{split}_labels"
            if target_key not in archive.files:
                raise DataError(f"{path.name}: {target_key} is missing (needed for {task})")
            split_images = _as_channels_first(archive[image_key], f"{path.name}:{image_key}")
            split_targets = archive[target_key].astype(np.int64)
            if task is Task.CLASSIFICATION:
                split_targets = split_targets.reshape(len(split_targets), -1)[:, 0]
            if len(split_targets) != len(split_images):
                raise DataError(
                    f"{path.name}: {target_key} has {len(split_targets)} entries "
                    f"but {image_key} has {len(split_images)}"
                )
            if task is Task.SEGMENTATION and split_targets.shape[1:] != split_images.shape[2:]:
                raise DataError(f"{path.name}: {target_key} shape does not match {image_key}")
            images.append(split_images)
            targets.append(split_targets)
    if not images:
        raise DataError(f"{path.name}: none of the splits {list(splits)} is present")
    return SiteArrays(np.concatenate(images), np.concatenate(targets))
