"""Training augmentation: labels move with their image, intensity changes leave labels
alone, nothing mixes examples, and the same seed gives the same batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from consortia.client.training.augment import BatchAugmenter
from consortia.common.config.settings import run_settings_from_json
from consortia.common.errors import ConfigError


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(6, 1, 8, 10, 12)).astype(np.float32))
    labels = torch.zeros((6, 1, 8, 10, 12), dtype=torch.int64)
    labels[:, :, 1:3, 2:5, 0:4] = 1
    labels[:, :, 5:7, 6:9, 8:12] = 2
    return images, labels


def test_flips_move_label_and_image_together() -> None:
    images, labels = _batch()
    images = images + 10.0 * labels.float()  # labelled voxels are the bright ones
    out_images, out_labels = BatchAugmenter(intensity=False, flip_axes=(0, 1, 2), seed=1)(
        images, labels
    )
    assert out_labels.shape == labels.shape and out_labels.dtype == torch.int64
    for index in range(len(images)):
        bright = out_images[index] > 5.0
        assert torch.equal(bright, out_labels[index] > 0)
        # the voxel counts per label survive every mirror
        assert torch.equal(
            torch.bincount(out_labels[index].flatten(), minlength=3),
            torch.bincount(labels[index].flatten(), minlength=3),
        )
    assert not torch.equal(out_labels, labels)  # 18 coin flips: some axis was mirrored


def test_intensity_augmentation_keeps_labels_and_is_seeded() -> None:
    images, labels = _batch()
    first = BatchAugmenter(intensity=True, flip_axes=(), seed=3)(images, labels)
    again = BatchAugmenter(intensity=True, flip_axes=(), seed=3)(images, labels)
    assert torch.equal(first[1], labels)
    assert torch.equal(first[0], again[0])
    assert not torch.equal(first[0], images)
    assert torch.isfinite(first[0]).all()


def test_classification_targets_pass_through_and_off_means_untouched() -> None:
    images, _ = _batch()
    classes = torch.tensor([0, 1, 0, 1, 1, 0])
    out, targets = BatchAugmenter(intensity=True, flip_axes=(0,), seed=0)(images, classes)
    assert torch.equal(targets, classes) and out.shape == images.shape
    idle = BatchAugmenter(intensity=False, flip_axes=(), seed=0)
    assert not idle.active
    assert idle(images, classes)[0] is images


def test_flip_axes_beyond_the_model_are_a_config_error() -> None:
    text = '{"model": {"spatial_dims": 2}, "training": {"flip_axes": [2]}}'
    with pytest.raises(ConfigError, match="flip_axes"):
        run_settings_from_json(text)
