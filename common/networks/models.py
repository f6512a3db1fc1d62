"""The one model factory shared by the server and every site.

Federated averaging only works when every participant builds *exactly* the same network, so
both the server and the sites call :func:`build_model` with the same :class:`ModelSettings`,
and :func:`model_fingerprint` hashes the resulting "architecture contract" (parameter and
buffer names, shapes and dtypes) so that a mismatch is caught before any weights are exchanged.

Every model built here is compatible with Opacus per-sample gradients:

* no BatchNorm anywhere (GroupNorm, or affine InstanceNorm for the UNet);
* no in-place operations (MONAI's default activations are ``inplace=True`` and its
  ``ResNetBlock`` does ``out += residual``; both break Opacus' backward hooks);
* ReLU rather than PReLU (Opacus has no efficient per-sample-gradient rule for PReLU).

:func:`build_model` checks these invariants on the finished model and raises
:class:`RuntimeError` if one is ever violated, e.g. by a MONAI upgrade.

MONAI quirks handled here (MONAI 1.5/1.6):

* ``monai.networks.nets.ResNet`` applies its ``norm`` argument only to the stem; its
  ``_make_layer`` is called without ``norm`` and falls back to BatchNorm for every residual
  block and downsample shortcut. :class:`_GroupNormResNet` forwards the norm to every layer.
* The ``"A"`` (parameter-free) shortcut of MONAI's ResNet concatenates ``out.data``, which
  detaches the gradient of the shortcut path, so the ``"B"`` (1x1 conv + norm) shortcut is used.
* With ``num_res_units > 0`` the UNet's top transposed convolution is followed by a norm over
  ``out_channels`` features; there the number of groups is ``gcd(norm_groups, out_channels)``.
  Every other GroupNorm uses exactly ``norm_groups`` groups.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from monai.networks.layers.factories import Conv, Norm
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.nets.resnet import ResNet
from monai.networks.nets.unet import UNet
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from consortia.common.config.model_settings import (
    INSTANCE,
    RESNET_LAYERS,
    RESNET_PLANES,
    UNET,
    Architecture,
    ModelSettings,
    NormKind,
)

__all__ = [
    "RESNET_LAYERS",
    "Architecture",
    "ModelSettings",
    "NoInplaceResNetBlock",
    "NormKind",
    "build_model",
    "model_fingerprint",
]

logger = logging.getLogger(__name__)

_ACT: tuple[str, dict[str, Any]] = ("relu", {"inplace": False})
_GCD_GROUP_NORM = "CONSORTIA_GCD_GROUP"


def _gcd_group_norm(
    num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True
) -> nn.GroupNorm:
    """A plain ``nn.GroupNorm`` with ``gcd(num_groups, num_channels)`` groups."""
    return nn.GroupNorm(math.gcd(num_groups, num_channels), num_channels, eps=eps, affine=affine)


def _gcd_group_norm_factory(_dim: int) -> Callable[..., nn.GroupNorm]:
    return _gcd_group_norm


if _GCD_GROUP_NORM not in Norm:
    Norm.add_factory_callable(_GCD_GROUP_NORM, _gcd_group_norm_factory)


class NoInplaceResNetBlock(nn.Module):
    """MONAI's basic ResNet block without in-place operations (Opacus-safe).

    Same constructor signature as ``monai.networks.nets.resnet.ResNetBlock``, so it can be
    passed as ``block=`` to ``monai.networks.nets.ResNet``, and the same sub-module names
    (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample``), so the weight names match.
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        spatial_dims: int = 3,
        stride: int = 1,
        downsample: nn.Module | partial[torch.Tensor] | None = None,
        act: str | tuple[Any, ...] = _ACT,
        norm: str | tuple[Any, ...] = ("group", {"num_groups": 8}),
    ) -> None:
        super().__init__()
        conv_type: type[nn.Conv2d | nn.Conv3d] = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv_type(
            in_planes, planes, kernel_size=3, padding=1, stride=stride, bias=False
        )
        self.bn1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=planes)
        self.act = get_act_layer(name=act)
        self.conv2 = conv_type(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two 3x3 convolutions plus the (possibly down-sampled) identity."""
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        out = out + residual
        result: torch.Tensor = self.act(out)
        return result


class _GroupNormResNet(ResNet):
    """``monai.networks.nets.ResNet`` that applies its norm to every layer, not just the stem."""

    _block_norm: tuple[str, dict[str, Any]]

    def __init__(self, *, block_norm: tuple[str, dict[str, Any]], **kwargs: Any) -> None:
        # ResNet.__init__ calls _make_layer, so the norm must be known before it runs.
        object.__setattr__(self, "_block_norm", block_norm)
        super().__init__(norm=block_norm, **kwargs)

    def _make_layer(
        self,
        block: Any,
        planes: int,
        blocks: int,
        spatial_dims: int,
        shortcut_type: str,
        stride: int = 1,
        norm: str | tuple[Any, ...] = "batch",
    ) -> nn.Sequential:
        del norm  # MONAI never passes it, so it would always be "batch".
        layers: nn.Sequential = super()._make_layer(
            block,
            planes,
            blocks,
            spatial_dims,
            shortcut_type,
            stride,
            norm=self._block_norm,
        )
        return layers


def _build_unet(settings: ModelSettings) -> nn.Module:
    norm: tuple[str, dict[str, Any]]
    if settings.norm == INSTANCE:
        norm = ("instance", {"affine": True})
    else:
        norm = (_GCD_GROUP_NORM, {"num_groups": settings.norm_groups})
    return UNet(
        spatial_dims=settings.spatial_dims,
        in_channels=settings.in_channels,
        out_channels=settings.out_channels,
        channels=settings.channels,
        strides=settings.strides,
        num_res_units=settings.num_res_units,
        act=_ACT,
        norm=norm,
        dropout=settings.dropout,
    )


def _build_resnet(settings: ModelSettings) -> nn.Module:
    model = _GroupNormResNet(
        block_norm=("group", {"num_groups": settings.norm_groups}),
        block=NoInplaceResNetBlock,
        layers=list(RESNET_LAYERS[settings.architecture]),
        block_inplanes=list(RESNET_PLANES),
        spatial_dims=settings.spatial_dims,
        n_input_channels=settings.in_channels,
        conv1_t_size=settings.conv1_kernel,
        conv1_t_stride=settings.conv1_stride,
        no_max_pool=settings.no_max_pool,
        shortcut_type="B",
        num_classes=settings.out_channels,
        bias_downsample=False,
        act=_ACT,
    )
    if settings.dropout > 0:
        # The pooling has no parameters, so this keeps the weight names unchanged.
        model.register_module("avgpool", nn.Sequential(model.avgpool, nn.Dropout(settings.dropout)))
    return model


def _check_dp_compatible(model: nn.Module) -> None:
    offending = [
        name or type(module).__name__
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm | nn.PReLU) or getattr(module, "inplace", False)
    ]
    if offending:
        raise RuntimeError(f"model has BatchNorm, PReLU or in-place modules at {offending}")
    # Imported here: Opacus costs about a second, and most imports of this module (the
    # settings, every `consortia` command) never build a model.
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise RuntimeError(f"model is not Opacus-compatible: {errors}")


def build_model(settings: ModelSettings) -> nn.Module:
    """Build the network described by ``settings``.

    Raises:
        TypeError: if ``settings`` is not a :class:`ModelSettings`.
        RuntimeError: if the built model is not Opacus-compatible (a bug, not a user error).
    """
    if not isinstance(settings, ModelSettings):
        raise TypeError(f"settings must be ModelSettings, got {type(settings).__name__}")
    model = _build_unet(settings) if settings.architecture == UNET else _build_resnet(settings)
    _check_dp_compatible(model)
    logger.debug(
        "built %s (%dD), %d parameters",
        settings.architecture,
        settings.spatial_dims,
        sum(p.numel() for p in model.parameters()),
    )
    return model


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the sorted ``(name, shape, dtype)`` triples of ``model.state_dict()``.

    Two models with the same fingerprint can exchange weights; values are not hashed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
    return digest.hexdigest()
