"""Grad-CAM saliency maps of a (global) model on a few of a site's images, computed at the site.

PRIVACY: a saliency map is drawn over a patient's image, and the image itself is part of
every :class:`SaliencyMap` and of every PNG that :func:`write_saliency_png` writes. These
maps are patient data. They stay at the site unless the site explicitly opts in to sharing
them; nothing in this module sends, logs or otherwise reveals pixel values (log lines carry
only counts, shapes, layer names and class indices).

Method: MONAI's :class:`monai.visualize.GradCAM` (Selvaraju et al., 2017) on a private copy
of the model, in float32, in eval mode, with gradients enabled even when the caller is inside
``torch.no_grad()`` or ``torch.inference_mode()``. The images are normalised with the
trainer's :func:`~consortia.client.training.trainer.normalize_images`, exactly as the model sees
them in training and evaluation. Each raw map is the ReLU of the gradient-weighted sum of the
target layer's feature maps, upsampled (bi/tri-linearly) to the image size and min-max scaled
to ``[0, 1]`` per image; a map with no positive evidence anywhere is all zeros.

* Classification (ResNet, logits ``(B, C)``): the map explains the logit of the target class,
  by default the predicted class.
* Segmentation (UNet, logits ``(B, C, *spatial)``): Grad-CAM needs one score per class, so
  the model is wrapped in :class:`SpatialMeanLogits`, which averages each class's logits over
  the whole image. The map therefore shows the evidence for class ``k`` *anywhere in the
  image*, not for one pixel or one connected lesion. The default target class is the
  foreground class (``1..C-1``) that the model predicts on the most pixels (class 1 when the
  model predicts no foreground).

Default target layers (``layer=None``) for the models that
:func:`consortia.common.networks.models.build_model` makes:

* UNet: ``"model.1"``. MONAI's UNet is ``Sequential(down, SkipConnection, up)`` at every
  depth; ``model.1`` is the top-level ``SkipConnection``, whose output is the concatenation
  of the first encoder level and the whole decoder path below it, at the resolution of the
  first down-sampling (half the input for the usual stride 2). It is the last feature map
  before the head (``model.2``: the final transposed convolution to ``out_channels``
  logits), i.e. everything the segmentation head sees, so it is the UNet analogue of "the
  last convolutional layer" in classification Grad-CAM, with the finest resolution a
  multi-channel decoder feature map has. The name is the same for every depth,
  ``num_res_units`` and norm that ``build_model`` accepts. On 2-, 3- and 4-level UNets
  trained on synthetic square lesions it never gave an empty map and peaked on (or within
  2 pixels of) the lesion in 87 to 100% of the maps, whereas the deeper decoder output
  ``model.1.submodule`` and the full-resolution ``model.2.0`` (only ``out_channels``
  features) often gave empty (all-zero) maps.
* ResNet: the deepest residual stage (``"layer4"``, else ``"layer3"``, ...) whose output is
  at least :data:`MIN_FEATURE_SIZE` pixels along both displayed axes. ``layer4`` is the
  classic Grad-CAM layer (the last block before pooling and the classifier), but with the
  default stem (stride 2 and max-pool) a 64-pixel image gives a 2x2 ``layer4`` map and a
  28-pixel image a 1x1 one, which cannot localise anything; a shallower stage is then used.

Any other layer can be chosen with ``layer=`` (a name from ``model.named_modules()``); its
output must be a feature map with the image's number of spatial dimensions.

3D volumes ``(N, C, D, H, W)`` (the project's layout, D along the slice normal): Grad-CAM
runs on the whole volume; the returned image and map are the middle slice along D,
``[D // 2]``, shape ``(H, W)``. The map keeps its whole-volume ``[0, 1]`` scale, so a slice
that holds little of the evidence looks faint. For multi-channel images the displayed image
is the first channel.

The caller's model is never modified: Grad-CAM runs on a deep copy (MONAI registers hooks
that it never removes and may switch activations off ``inplace``), so the original keeps its
weights, gradients, hooks, device and training mode.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import numpy as np
import torch
from monai.networks.nets import ResNet, UNet
from monai.visualize import GradCAM
from PIL import Image
from torch import nn

from consortia.client.training.trainer import normalize_images
from consortia.common.config.settings import Task
from consortia.common.files import write_atomic

__all__ = [
    "MIN_FEATURE_SIZE",
    "RESNET_STAGES",
    "UNET_LAYER",
    "SaliencyMap",
    "SpatialMeanLogits",
    "default_layer",
    "saliency_maps",
    "select_cases",
    "write_saliency_png",
]

logger = logging.getLogger(__name__)

#: Default Grad-CAM layer of a MONAI UNet (see the module docstring).
UNET_LAYER: Final = "model.1"
#: ResNet stages, deepest first; the default layer is the first one large enough.
RESNET_STAGES: Final = ("layer4", "layer3", "layer2", "layer1")
#: Smallest feature-map size (pixels along each displayed axis) of a default ResNet layer.
MIN_FEATURE_SIZE: Final = 4

_WRAPPED: Final = "net"  # attribute of SpatialMeanLogits that holds the model
_PANEL_MIN_PIXELS: Final = 256  # each PNG panel is upscaled (nearest) to at least this size
_GAP_PIXELS: Final = 8  # white gap between the two panels
_OVERLAY_ALPHA: Final = 0.4  # opacity of the heat map over the image
_COLORMAP: Final = "turbo"


@dataclass(frozen=True)
class SaliencyMap:
    """One explained image (patient data: keep it at the site unless the site opts in).

    Attributes:
        image: ``(H, W)`` float32 in ``[0, 1]``: the normalised input (first channel; middle
            slice along D for 3D) min-max scaled for display.
        saliency: ``(H, W)`` float32 in ``[0, 1]``: the Grad-CAM map on the same grid.
        target_class: the class the map explains.
        score: the model's probability of ``target_class``: for classification the softmax
            probability; for segmentation the mean softmax probability of the class over the
            pixels (voxels, whole volume) predicted as that class, 0.0 when there are none.
        layer: the name (in ``model.named_modules()``) of the layer the map was computed at.
    """

    image: np.ndarray
    saliency: np.ndarray
    target_class: int
    score: float
    layer: str = ""

    def __post_init__(self) -> None:
        for name in ("image", "saliency"):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 2:
                raise ValueError(f"{name} must be a 2D float32 numpy array")
            if array.size == 0:
                raise ValueError(f"{name} must not be empty")
            if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
                raise ValueError(f"{name} values must be finite and in [0, 1]")
        if self.image.shape != self.saliency.shape:
            raise ValueError(
                f"image {self.image.shape} and saliency {self.saliency.shape} shapes differ"
            )
        if isinstance(self.target_class, bool) or not isinstance(self.target_class, int):
            raise ValueError(f"target_class must be an int, got {self.target_class!r}")
        if self.target_class < 0:
            raise ValueError(f"target_class must be >= 0, got {self.target_class}")
        if not isinstance(self.score, float) or not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be a float in [0, 1], got {self.score!r}")
        if not isinstance(self.layer, str):
            raise ValueError(f"layer must be a str, got {self.layer!r}")


class SpatialMeanLogits(nn.Module):
    """``net``'s logits averaged over the spatial axes: ``(B, C, *spatial)`` -> ``(B, C)``.

    Grad-CAM of class ``k`` through this wrapper explains the mean logit of ``k`` over the
    whole image, i.e. the evidence for class ``k`` anywhere in the image. Outputs that are
    already ``(B, C)`` pass through unchanged. Layer names gain the prefix ``"net."``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``net``, spatially averaged when they have spatial axes."""
        logits: torch.Tensor = self.net(x)
        if logits.ndim > 2:
            logits = logits.mean(dim=tuple(range(2, logits.ndim)))
        return logits


def select_cases(num_cases: int, count: int, seed: int) -> list[int]:
    """Sorted, unique indices of ``min(count, num_cases)`` cases out of ``num_cases``.

    Deterministic and independent of numpy's random generators: cases are ranked by the
    SHA-256 of ``"seed:index"``, so the choice is the same in any process, version or
    platform, and a larger ``count`` (same seed) keeps every case a smaller one chose.

    Raises:
        TypeError: if an argument is not an int.
        ValueError: if ``num_cases`` or ``count`` is negative.
    """
    for name, value in (("num_cases", num_cases), ("count", count), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if num_cases < 0:
        raise ValueError(f"num_cases must be >= 0, got {num_cases}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    keep = min(int(count), int(num_cases))
    ranked = sorted(
        range(int(num_cases)),
        key=lambda index: hashlib.sha256(f"{int(seed)}:{index}".encode()).digest(),
    )
    return sorted(ranked[:keep])


def default_layer(model: nn.Module, feature_sizes: dict[str, tuple[int, ...]]) -> str:
    """The default Grad-CAM layer of ``model`` (see the module docstring).

    ``feature_sizes`` maps ResNet stage names to the spatial shape of their output on the
    images to explain (unused for a UNet).

    Raises:
        ValueError: for a model that is neither a MONAI UNet nor a MONAI ResNet.
    """
    if isinstance(model, UNet):
        return UNET_LAYER
    if isinstance(model, ResNet):
        for stage in RESNET_STAGES:
            size = feature_sizes.get(stage)
            if size is not None and min(size[-2:]) >= MIN_FEATURE_SIZE:
                return stage
        return RESNET_STAGES[-1]
    raise ValueError(
        f"no default Grad-CAM layer for {type(model).__name__}; pass layer= (a name from "
        "model.named_modules())"
    )


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim not in (4, 5):
        raise ValueError(
            f"images must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(images.shape)}"
        )
    if images.is_complex() or images.dtype == torch.bool:
        raise ValueError(f"images must be real numbers, got {images.dtype}")
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values")


def _probe(
    model: nn.Module, x: torch.Tensor, names: list[str]
) -> tuple[torch.Tensor, dict[str, tuple[int, ...]]]:
    """Logits of ``model`` on ``x`` and the output shapes of the named sub-modules."""
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in names:

        def _record(_m: nn.Module, _i: object, output: object, name: str = name) -> None:
            shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else ()

        handles.append(modules[name].register_forward_hook(_record))
    try:
        with torch.no_grad():
            logits: torch.Tensor = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits.float(), shapes


def _minmax(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    if not high - low > 1e-12 or not math.isfinite(high - low):
        return np.zeros(array.shape, dtype=np.float32)
    return np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _display_slice(volume: np.ndarray) -> np.ndarray:
    """``(H, W)`` of a 2D ``(H, W)`` map, or the middle D slice of a ``(D, H, W)`` one."""
    return volume if volume.ndim == 2 else volume[volume.shape[0] // 2]


def _score_and_class(
    logits: torch.Tensor, task: Task, target_class: int | None
) -> tuple[int, float]:
    """Target class and the model's probability of it, for one image's logits ``(C, ...)``."""
    probabilities = torch.softmax(logits, dim=0)
    if task is Task.CLASSIFICATION:
        k = int(probabilities.argmax()) if target_class is None else target_class
        return k, float(probabilities[k])
    predicted = probabilities.argmax(dim=0)
    if target_class is None:
        counts = torch.bincount(predicted.flatten(), minlength=logits.shape[0])[1:]
        k = int(counts.argmax()) + 1 if bool((counts > 0).any()) else 1
    else:
        k = target_class
    region = predicted == k
    score = float(probabilities[k][region].mean()) if bool(region.any()) else 0.0
    return k, min(max(score, 0.0), 1.0)


def saliency_maps(
    model: nn.Module,
    images: torch.Tensor,
    task: Task,
    *,
    device: torch.device,
    target_class: int | None = None,
    layer: str | None = None,
) -> list[SaliencyMap]:
    """Grad-CAM maps of ``model`` on raw site ``images`` ``(N, C, *spatial)``, one per image.

    Args:
        model: the trained model (a MONAI UNet for segmentation, a MONAI ResNet for
            classification, or any model together with ``layer``). It is not modified.
        images: raw float images as the site's data loader gives them (normalised here with
            :func:`~consortia.client.training.trainer.normalize_images`, as in training).
        task: segmentation (logits ``(N, C, *spatial)``) or classification (``(N, C)``).
        device: where to compute (CPU or CUDA); results are numpy arrays on the host.
        target_class: the class to explain for every image; default: the predicted class
            (classification) or the most predicted foreground class (segmentation).
        layer: the Grad-CAM layer, a name from ``model.named_modules()``; default: see
            :func:`default_layer`.

    Raises:
        TypeError: for a wrong argument type.
        ValueError: for bad images, a layer that does not exist or is not a spatial feature
            map, a ``target_class`` outside the model's classes, or model outputs that do
            not fit ``task``.
    """
    names = _check_arguments(model, images, task, device, target_class, layer)
    if images.shape[0] == 0:
        return []
    # Inference tensors cannot take part in autograd: leave inference mode for the copy too.
    with torch.inference_mode(False), torch.enable_grad():
        net = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
        net.requires_grad_(False)  # gradients flow to the activations only
        x = normalize_images(images.detach().clone().to(device=device, dtype=torch.float32))
        first_logits, chosen = _probe_layer(net, x, model, layer, names)
        _check_logits(first_logits, images, task, target_class)
        cam = GradCAM(
            nn_module=SpatialMeanLogits(net).eval(),  # eval: ModelWithHooks restores its mode
            target_layers=f"{_WRAPPED}.{chosen}",
            postprocessing=lambda m: m,
        )
        return [
            _explain_one(cam, net, x, index, first_logits, (task, target_class), chosen)
            for index in range(images.shape[0])
        ]


def _check_arguments(
    model: nn.Module,
    images: torch.Tensor,
    task: Task,
    device: torch.device,
    target_class: int | None,
    layer: str | None,
) -> dict[str, nn.Module]:
    """The arguments of :func:`saliency_maps` checked; returns the model's sub-modules."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task, got {task!r}")
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, got {type(device).__name__}")
    _check_images(images)
    if target_class is not None and (
        isinstance(target_class, bool) or not isinstance(target_class, int) or target_class < 0
    ):
        raise ValueError(f"target_class must be an int >= 0 or None, got {target_class!r}")
    names = dict(model.named_modules())
    if layer is not None and (not isinstance(layer, str) or not layer or layer not in names):
        raise ValueError(
            f"layer {layer!r} is not a sub-module of {type(model).__name__} "
            "(see model.named_modules())"
        )
    return names


def _probe_layer(
    net: nn.Module,
    x: torch.Tensor,
    model: nn.Module,
    layer: str | None,
    names: dict[str, nn.Module],
) -> tuple[torch.Tensor, str]:
    """The logits of the copy ``net`` on the first image and the Grad-CAM layer: ``layer``,
    else the default for ``model``; it must output a feature map of the images' dimensions."""
    spatial_dims = x.ndim - 2
    candidates = [layer] if layer is not None else [UNET_LAYER, *RESNET_STAGES]
    first_logits, shapes = _probe(net, x[:1], [n for n in candidates if n in names])
    chosen = layer if layer is not None else default_layer(model, shapes)
    if chosen not in shapes:
        raise ValueError(f"layer {chosen!r} is not used when the model runs on these images")
    if len(shapes[chosen]) != spatial_dims + 2:
        raise ValueError(
            f"layer {chosen!r} outputs shape {shapes[chosen]}, not a {spatial_dims}D "
            "feature map (N, C, *spatial); choose a convolutional layer"
        )
    logger.info(
        "Grad-CAM of %d image(s) at layer %r (feature map %s)",
        x.shape[0],
        chosen,
        shapes[chosen][2:],
    )
    return first_logits, chosen


def _explain_one(
    cam: GradCAM,
    net: nn.Module,
    x: torch.Tensor,
    index: int,
    first_logits: torch.Tensor,
    target: tuple[Task, int | None],
    chosen: str,
) -> SaliencyMap:
    """The Grad-CAM map of normalised image ``x[index]`` (``target``: the task and the
    class asked for, if any)."""
    task, target_class = target
    sample = x[index : index + 1].clone()
    logits = first_logits if index == 0 else _probe(net, sample, [])[0]
    k, score = _score_and_class(logits[0], task, target_class)
    sample.requires_grad_(True)
    raw = cam(sample, class_idx=k)
    saliency = _display_slice(_minmax(raw[0, 0].detach().float().cpu().numpy()))
    image = _minmax(_display_slice(x[index, 0].detach().cpu().numpy()))
    return SaliencyMap(
        image=np.ascontiguousarray(image, dtype=np.float32),
        saliency=np.ascontiguousarray(saliency, dtype=np.float32),
        target_class=k,
        score=score,
        layer=chosen,
    )


def _check_logits(
    logits: torch.Tensor, images: torch.Tensor, task: Task, target_class: int | None
) -> None:
    if task is Task.SEGMENTATION and (
        logits.ndim != images.ndim or tuple(logits.shape[2:]) != tuple(images.shape[2:])
    ):
        raise ValueError(
            f"segmentation needs logits (N, C, *spatial) matching images {tuple(images.shape)}, "
            f"the model gives {tuple(logits.shape)}"
        )
    if task is Task.CLASSIFICATION and logits.ndim != 2:
        raise ValueError(f"classification needs logits (N, C), the model gives {logits.shape}")
    if target_class is not None and target_class >= logits.shape[1]:
        raise ValueError(
            f"target_class {target_class} is out of range for {logits.shape[1]} classes"
        )


def _panels(saliency: SaliencyMap) -> np.ndarray:
    """``(H', W', 3)`` uint8: the image, a gap, and the image under the heat map."""
    from matplotlib import colormaps  # the colormap table only: no backend, no pyplot

    height, width = saliency.image.shape
    scale = max(1, math.ceil(_PANEL_MIN_PIXELS / max(height, width)))
    grey = np.repeat(saliency.image[:, :, None], 3, axis=2)
    heat = np.asarray(colormaps[_COLORMAP](saliency.saliency)[:, :, :3], dtype=np.float32)
    overlay = (1.0 - _OVERLAY_ALPHA) * grey + _OVERLAY_ALPHA * heat
    gap = np.ones((height * scale, _GAP_PIXELS, 3), dtype=np.float32)

    def upscale(panel: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(panel, scale, axis=0), scale, axis=1)

    canvas = np.concatenate([upscale(grey), gap, upscale(overlay)], axis=1)
    return np.asarray(np.round(np.clip(canvas, 0.0, 1.0) * 255.0), dtype=np.uint8)


def write_saliency_png(saliency: SaliencyMap, path: Path) -> Path:
    """Write ``path`` (a ``.png``): the image, and beside it the image under a semi-transparent
    heat map of the saliency (``turbo`` colormap, 40% opacity), no text.

    Each panel is the map upscaled by an integer factor (nearest neighbour) to at least 256
    pixels on its longer side; the panels are 8 white pixels apart. The file is written
    crash-safely (temporary file in the same folder, then renamed over ``path``); the folder
    must exist. The PNG shows a patient's image: it must stay at the site unless the site
    opts in to sharing it.

    Returns:
        ``path``.

    Raises:
        TypeError: if ``saliency`` is not a SaliencyMap.
        ValueError: if ``path`` does not end in ``.png``.
    """
    if not isinstance(saliency, SaliencyMap):
        raise TypeError(f"saliency must be a SaliencyMap, got {type(saliency).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {path.name!r}")
    picture = Image.fromarray(_panels(saliency))

    def _write(handle: IO[bytes]) -> None:
        picture.save(handle, format="PNG")

    write_atomic(path, _write)
    logger.debug("wrote a saliency PNG of %dx%d pixels", picture.width, picture.height)
    return path
