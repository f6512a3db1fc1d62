"""Tests for consortia.client.saliency.gradcam: real models from build_model, real MONAI Grad-CAM,
real PNG files read back with Pillow (no mocks)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from consortia.client.data.site_data import SiteArrays
from consortia.client.saliency.gradcam import (
    MIN_FEATURE_SIZE,
    UNET_LAYER,
    SaliencyMap,
    SpatialMeanLogits,
    saliency_maps,
    select_cases,
    write_saliency_png,
)
from consortia.client.training.trainer import normalize_images, train_local
from consortia.common.config.settings import ModelConfig, Task
from consortia.common.demo.data import DemoDataSettings, generate_cases
from consortia.common.networks.models import ModelSettings, build_model

CPU = torch.device("cpu")
SIZE = 32
LESION = 4  # side of the synthetic square lesion
SMALL_UNET = ModelSettings("unet", channels=(8, 16), strides=(2,))
SMALL_STEM = ModelSettings("resnet18", conv1_kernel=3, conv1_stride=1, no_max_pool=True)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and do not fight a busy machine for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _squares(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray, list[tuple[int, int]]]:
    """Noisy images in [0, 1] (as the site loader gives them), each with one bright square
    lesion at a random place; returns images (N, 1, SIZE, SIZE), masks and square corners."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 0.05, (n, 1, SIZE, SIZE)).astype(np.float32)
    masks = np.zeros((n, SIZE, SIZE), dtype=np.int64)
    corners = []
    for i in range(n):
        row, col = (int(v) for v in rng.integers(1, SIZE - LESION - 1, 2))
        images[i, 0, row : row + LESION, col : col + LESION] += 0.5
        masks[i, row : row + LESION, col : col + LESION] = 1
        corners.append((row, col))
    return torch.from_numpy(np.clip(images, 0.0, 1.0)), masks, corners


def _demo_images(n: int) -> torch.Tensor:
    """Synthetic demo cases as float32 (N, 1, H, W) in [0, 1], like SiteArrays holds them."""
    cases = generate_cases(0, DemoDataSettings(image_size=SIZE, test_cases=n), "test")
    return torch.from_numpy(cases.images[:, None].astype(np.float32) / 255.0)


@pytest.fixture(scope="module")
def trained_unet() -> nn.Module:
    """A small 2D UNet trained (80 steps, about 1 to 3 s on one core) with the site trainer
    to segment the bright squares."""
    images, masks, _ = _squares(64, seed=2)
    torch.manual_seed(2)
    model = build_model(SMALL_UNET)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_local(
            model,
            SiteArrays(images.numpy(), masks),
            Task.SEGMENTATION,
            epochs=20,
            batch_size=16,
            learning_rate=3e-3,
            seed=2,
            device=CPU,
        )
    finally:
        torch.set_num_threads(threads)
    return model


class _BoxDetector(nn.Module):
    """A classifier whose class-1 logit is the mean over the image of a thresholded box
    filter: evidence for class 1 exists only where a bright LESION x LESION square is."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, LESION + 1, padding=LESION // 2)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(1, 2)
        self.unused = nn.Conv2d(1, 1, 3)
        with torch.no_grad():
            self.features.weight.fill_(1.0 / (LESION + 1) ** 2)
            bias = self.features.bias
            assert bias is not None
            bias.fill_(-2.0)  # z-scores: lesion about +6, background about 0
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.pool(self.act(self.features(x))).flatten(1))
        return out


def _check_map(saliency: SaliencyMap, shape: tuple[int, int]) -> None:
    for array in (saliency.image, saliency.saliency):
        assert array.shape == shape
        assert array.dtype == np.float32
        assert np.isfinite(array).all()
        assert array.min() >= 0.0
        assert array.max() <= 1.0
    assert 0.0 <= saliency.score <= 1.0


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
        for m in model.modules()
    )


# --- select_cases -------------------------------------------------------------------------


def test_select_cases_is_deterministic_sorted_and_unique() -> None:
    chosen = select_cases(100, 7, seed=3)
    assert chosen == select_cases(100, 7, seed=3)
    assert chosen == sorted(set(chosen))
    assert len(chosen) == 7
    assert all(0 <= i < 100 for i in chosen)
    assert chosen != select_cases(100, 7, seed=4)


def test_select_cases_clips_and_nests() -> None:
    assert select_cases(5, 50, seed=0) == [0, 1, 2, 3, 4]
    assert select_cases(5, 0, seed=0) == []
    assert select_cases(0, 3, seed=0) == []
    assert set(select_cases(40, 3, seed=9)) <= set(select_cases(40, 10, seed=9))


@pytest.mark.parametrize(("num_cases", "count"), [(10, -1), (-1, 2)])
def test_select_cases_refuses_negative(num_cases: int, count: int) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        select_cases(num_cases, count, seed=0)


def test_select_cases_refuses_non_int() -> None:
    with pytest.raises(TypeError):
        select_cases(10, True, seed=0)
    with pytest.raises(TypeError):
        select_cases(10, 2.0, seed=0)  # type: ignore[arg-type]


# --- classification -----------------------------------------------------------------------


def test_resnet_default_config_on_demo_images() -> None:
    model = build_model(ModelConfig(architecture="resnet18").to_model_settings())
    images = _demo_images(3)
    maps = saliency_maps(model, images, Task.CLASSIFICATION, device=CPU)
    assert len(maps) == 3
    with torch.no_grad():
        probabilities = torch.softmax(model.eval()(normalize_images(images)), dim=1)
    for saliency, p in zip(maps, probabilities, strict=True):
        _check_map(saliency, (SIZE, SIZE))
        assert saliency.target_class == int(p.argmax())
        assert saliency.score == pytest.approx(float(p.max()), abs=1e-5)
        # Default stem (stride 2 + max-pool): 32 px -> layer4 is 1x1, layer3 2x2, layer2 4x4.
        assert saliency.layer == "layer2"
    # The displayed image is the normalised input, min-max scaled: the raw image's shape.
    raw = images[0, 0].numpy()
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(maps[0].image, expected, atol=1e-5)


def test_resnet_small_stem_uses_layer4_and_given_class() -> None:
    model = build_model(SMALL_STEM)
    maps = saliency_maps(model, _demo_images(1), Task.CLASSIFICATION, device=CPU, target_class=1)
    assert maps[0].layer == "layer4"  # 32 px with stride 1 and no max-pool: layer4 is 4x4
    assert MIN_FEATURE_SIZE == 4
    assert maps[0].target_class == 1
    _check_map(maps[0], (SIZE, SIZE))


def test_classifier_map_highlights_the_deciding_region() -> None:
    images, masks, corners = _squares(3, seed=5)
    maps = saliency_maps(_BoxDetector(), images, Task.CLASSIFICATION, device=CPU, layer="features")
    for saliency, mask, (row, col) in zip(maps, masks, corners, strict=True):
        _check_map(saliency, (SIZE, SIZE))
        assert saliency.target_class == 1
        assert saliency.layer == "features"
        lesion = mask.astype(bool)
        assert saliency.saliency[lesion].mean() > 0.3
        assert saliency.saliency[~lesion].mean() < 0.05
        peak = np.unravel_index(int(saliency.saliency.argmax()), saliency.saliency.shape)
        assert row <= peak[0] < row + LESION
        assert col <= peak[1] < col + LESION
    # Explaining the other class: the lesion is evidence against it, so it is the cold part.
    (other,) = saliency_maps(
        _BoxDetector(),
        images[:1],
        Task.CLASSIFICATION,
        device=CPU,
        layer="features",
        target_class=0,
    )
    assert other.target_class == 0
    lesion = masks[0].astype(bool)
    assert other.saliency[lesion].mean() < other.saliency[~lesion].mean()


# --- segmentation -------------------------------------------------------------------------


def test_unet_default_config_2d() -> None:
    model = build_model(ModelConfig().to_model_settings())
    maps = saliency_maps(model, _demo_images(2), Task.SEGMENTATION, device=CPU)
    for saliency in maps:
        _check_map(saliency, (SIZE, SIZE))
        assert saliency.layer == UNET_LAYER
        assert saliency.target_class == 1


def test_trained_unet_map_overlaps_the_lesion(trained_unet: nn.Module) -> None:
    images, masks, corners = _squares(4, seed=1)
    maps = saliency_maps(trained_unet, images, Task.SEGMENTATION, device=CPU)
    for saliency, mask, (row, col) in zip(maps, masks, corners, strict=True):
        _check_map(saliency, (SIZE, SIZE))
        assert saliency.target_class == 1
        assert saliency.score > 0.5  # the model does segment the lesion
        assert saliency.saliency.std() > 0.01  # not constant
        lesion = mask.astype(bool)
        inside, outside = saliency.saliency[lesion].mean(), saliency.saliency[~lesion].mean()
        assert inside > 0.1
        assert inside > 10 * outside
        peak = np.unravel_index(int(saliency.saliency.argmax()), saliency.saliency.shape)
        assert row - 2 <= peak[0] < row + LESION + 2
        assert col - 2 <= peak[1] < col + LESION + 2


def test_unet_3d_gives_the_middle_slice() -> None:
    model = build_model(ModelSettings("unet", spatial_dims=3, channels=(8, 16), strides=(2,)))
    generator = torch.Generator().manual_seed(0)
    volumes = torch.rand((2, 1, 8, 16, 12), generator=generator)
    volumes[:, :, 4, 4:8, 4:8] += 2.0
    maps = saliency_maps(model, volumes, Task.SEGMENTATION, device=CPU)
    assert len(maps) == 2
    for saliency, volume in zip(maps, volumes, strict=True):
        _check_map(saliency, (16, 12))
        assert saliency.layer == UNET_LAYER
        middle = volume[0, 4].numpy()
        expected = (middle - middle.min()) / (middle.max() - middle.min())
        np.testing.assert_allclose(saliency.image, expected, atol=1e-5)


def test_spatial_mean_logits() -> None:
    model = build_model(SMALL_UNET).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(
            SpatialMeanLogits(model)(x).numpy(), model(x).mean(dim=(2, 3)).numpy(), atol=1e-6
        )
        assert SpatialMeanLogits(nn.Flatten())(torch.ones(3, 2)).shape == (3, 2)


# --- the caller's model and the grad mode -------------------------------------------------


def test_model_weights_grads_hooks_and_mode_are_unchanged() -> None:
    model = build_model(ModelSettings("resnet18", dropout=0.2)).train()
    model(torch.randn(2, 1, SIZE, SIZE)).sum().backward()  # the caller has gradients
    weights = _snapshot(model)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = _hooks(model)
    first = saliency_maps(model, _demo_images(2), Task.CLASSIFICATION, device=CPU)
    assert all(m.training for m in model.modules())
    assert _hooks(model) == hooks
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == flags[name]
        assert parameter.grad is not None
        assert torch.equal(parameter.grad, grads[name]), name
    # Eval mode inside (no dropout): the same images give the same maps.
    second = saliency_maps(model, _demo_images(2), Task.CLASSIFICATION, device=CPU)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.saliency, b.saliency)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_works_when_the_caller_disabled_gradients(mode: str) -> None:
    model = build_model(SMALL_UNET)
    expected = saliency_maps(model, _demo_images(1), Task.SEGMENTATION, device=CPU)
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        images = _demo_images(1)
        maps = saliency_maps(model, images, Task.SEGMENTATION, device=CPU)
    np.testing.assert_allclose(maps[0].saliency, expected[0].saliency, atol=1e-6)


# --- input validation ---------------------------------------------------------------------


def test_bad_layer_name_is_named() -> None:
    model = build_model(SMALL_UNET)
    with pytest.raises(ValueError, match=re.escape("'model.9.conv'")):
        saliency_maps(model, _demo_images(1), Task.SEGMENTATION, device=CPU, layer="model.9.conv")


def test_layer_without_spatial_output_is_refused() -> None:
    model = build_model(SMALL_STEM)
    with pytest.raises(ValueError, match=re.escape("'fc'")):
        saliency_maps(model, _demo_images(1), Task.CLASSIFICATION, device=CPU, layer="fc")


def test_layer_outside_the_forward_pass_is_named() -> None:
    with pytest.raises(ValueError, match=re.escape("'unused'")):
        saliency_maps(
            _BoxDetector(), _demo_images(1), Task.CLASSIFICATION, device=CPU, layer="unused"
        )


def test_unknown_model_needs_a_layer() -> None:
    with pytest.raises(ValueError, match="layer="):
        saliency_maps(_BoxDetector(), _demo_images(1), Task.CLASSIFICATION, device=CPU)


def test_target_class_out_of_range() -> None:
    model = build_model(SMALL_UNET)
    with pytest.raises(ValueError, match="target_class 2"):
        saliency_maps(model, _demo_images(1), Task.SEGMENTATION, device=CPU, target_class=2)
    with pytest.raises(ValueError, match="target_class"):
        saliency_maps(model, _demo_images(1), Task.SEGMENTATION, device=CPU, target_class=-1)


def test_task_must_fit_the_model() -> None:
    with pytest.raises(ValueError, match="classification needs logits"):
        saliency_maps(build_model(SMALL_UNET), _demo_images(1), Task.CLASSIFICATION, device=CPU)
    with pytest.raises(ValueError, match="segmentation needs logits"):
        saliency_maps(build_model(SMALL_STEM), _demo_images(1), Task.SEGMENTATION, device=CPU)


def test_bad_images_are_refused() -> None:
    model = build_model(SMALL_UNET)
    with pytest.raises(ValueError, match="images must be"):
        saliency_maps(model, torch.zeros(1, SIZE, SIZE), Task.SEGMENTATION, device=CPU)
    nan = _demo_images(1)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        saliency_maps(model, nan, Task.SEGMENTATION, device=CPU)
    empty = torch.zeros(0, 1, SIZE, SIZE)
    assert saliency_maps(model, empty, Task.SEGMENTATION, device=CPU) == []


def test_saliency_map_validates_its_fields() -> None:
    good = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="float32"):
        SaliencyMap(good.astype(np.float64), good, 1, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SaliencyMap(good + 2, good, 1, 0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        SaliencyMap(good, np.zeros((4, 5), dtype=np.float32), 1, 0.5)
    with pytest.raises(ValueError, match="score"):
        SaliencyMap(good, good, 1, 1.5)


# --- PNG ----------------------------------------------------------------------------------


def _example(height: int = SIZE, width: int = SIZE) -> SaliencyMap:
    image = np.linspace(0.0, 1.0, height * width, dtype=np.float32).reshape(height, width)
    saliency = np.zeros((height, width), dtype=np.float32)
    saliency[: height // 2, : width // 2] = 1.0
    return SaliencyMap(image=image, saliency=saliency, target_class=1, score=0.9)


def test_png_is_written_atomically_and_decodes(tmp_path: Path) -> None:
    example = _example()
    path = tmp_path / "case_0007.png"
    path.write_bytes(b"an older file")
    assert write_saliency_png(example, path) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_0007.png"]  # no temp file
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.mode == "RGB"
        # Panels of 32 px are upscaled 8x to 256 px, with an 8 px gap between them.
        assert picture.size == (256 + 8 + 256, 256)
        pixels = np.asarray(picture)
    left = pixels[:, :256]
    grey = np.round(np.repeat(np.repeat(example.image, 8, 0), 8, 1) * 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(left[:, :, channel], grey)
    assert (pixels[:, 256:264] == 255).all()
    right = pixels[:, 264:].astype(int)
    # Hot and cold halves of the overlay differ from the plain image.
    assert np.abs(right[:128, :128] - left[:128, :128]).mean() > 20
    assert np.abs(right[:128, :128] - right[:128, 128:]).mean() > 20


def test_png_of_a_real_3d_map_has_the_slice_shape(tmp_path: Path) -> None:
    model = build_model(ModelSettings("unet", spatial_dims=3, channels=(8, 16), strides=(2,)))
    volume = torch.rand((1, 1, 8, 16, 12), generator=torch.Generator().manual_seed(1))
    (saliency,) = saliency_maps(model, volume, Task.SEGMENTATION, device=CPU)
    path = write_saliency_png(saliency, tmp_path / "volume.png")
    with Image.open(path) as picture:
        assert picture.size == (12 * 16 + 8 + 12 * 16, 16 * 16)


def test_png_path_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.png"):
        write_saliency_png(_example(), tmp_path / "map.jpg")
    with pytest.raises(FileNotFoundError):
        write_saliency_png(_example(), tmp_path / "missing" / "map.png")
    assert list(tmp_path.iterdir()) == []


# --- CUDA ---------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    cuda = torch.device("cuda")
    for settings, task in ((SMALL_UNET, Task.SEGMENTATION), (SMALL_STEM, Task.CLASSIFICATION)):
        torch.manual_seed(0)
        model = build_model(settings)
        images = _demo_images(2)
        on_cpu = saliency_maps(model, images, task, device=CPU)
        on_gpu = saliency_maps(model, images, task, device=cuda)
        assert next(model.parameters()).device == CPU  # the caller's model did not move
        for a, b in zip(on_cpu, on_gpu, strict=True):
            assert a.target_class == b.target_class
            assert a.layer == b.layer
            np.testing.assert_allclose(a.image, b.image, atol=1e-4)
            np.testing.assert_allclose(a.saliency, b.saliency, atol=0.05)
            assert a.score == pytest.approx(b.score, abs=1e-3)
