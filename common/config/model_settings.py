"""What determines a model's architecture (:class:`ModelSettings`) and the approved weights
it starts from (:class:`ModelInit`), plain and torch-free.

Kept apart from :mod:`consortia.common.networks.models` (the factory, which needs torch and MONAI)
so that reading and validating a run config, and every command that only does that,
starts without importing either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from consortia.common.errors import ConfigError

__all__ = [
    "GROUP",
    "INSTANCE",
    "RESNET_LAYERS",
    "RESNET_PLANES",
    "UNET",
    "Architecture",
    "ModelInit",
    "ModelSettings",
    "NormKind",
]

Architecture = Literal["unet", "resnet18", "resnet34"]
NormKind = Literal["group", "instance"]

#: Residual blocks per stage for each supported ResNet depth.
RESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}
#: Feature widths of the ResNets' four stages.
RESNET_PLANES = (64, 128, 256, 512)
UNET = "unet"
GROUP: NormKind = "group"
INSTANCE: NormKind = "instance"


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _int_tuple(name: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, tuple | list):
        raise TypeError(f"{name} must be a tuple of ints, got {type(value).__name__}")
    for item in value:
        _check_int(name, item, 1)
    return tuple(value)


@dataclass(frozen=True)
class ModelSettings:
    """Everything that determines a model's architecture (and hence its weight names).

    Attributes:
        architecture: ``"unet"`` (segmentation) or ``"resnet18"``/``"resnet34"`` (classification).
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        out_channels: segmentation: classes including background; classification: classes.
            At least 2 (binary problems use two logits).
        channels: UNet feature channels per level.
        strides: UNet down-sampling strides, ``len(channels) - 1`` of them.
        num_res_units: residual units per UNet level (0 for plain convolutions).
        norm: ``"group"`` (GroupNorm) or ``"instance"`` (affine InstanceNorm, UNet only).
        norm_groups: GroupNorm groups; must divide every feature-channel count (UNet
            ``channels``; 64 for the ResNets, whose widths are 64/128/256/512).
        dropout: dropout probability in ``[0, 1)``; for ResNets applied before the classifier.
        conv1_kernel: ResNet stem convolution kernel size (use 3 for small 2D images).
        conv1_stride: ResNet stem convolution stride (use 1 for small 2D images).
        no_max_pool: skip the ResNet stem max-pool (use ``True`` for small 2D images).
    """

    architecture: Architecture
    spatial_dims: Literal[2, 3] = 2
    in_channels: int = 1
    out_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: NormKind = GROUP
    norm_groups: int = 8
    dropout: float = 0.0
    conv1_kernel: int = 7
    conv1_stride: int = 2
    no_max_pool: bool = False

    def __post_init__(self) -> None:
        if self.architecture not in get_args(Architecture):
            raise ValueError(
                f"architecture must be one of {get_args(Architecture)}, got {self.architecture!r}"
            )
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        _check_int("in_channels", self.in_channels, 1)
        _check_int("out_channels", self.out_channels, 2)
        # Accept lists (e.g. from JSON/TOML configs) but store tuples so settings stay hashable.
        object.__setattr__(self, "channels", _int_tuple("channels", self.channels))
        object.__setattr__(self, "strides", _int_tuple("strides", self.strides))
        _check_int("num_res_units", self.num_res_units, 0)
        if self.norm not in get_args(NormKind):
            raise ValueError(f"norm must be one of {get_args(NormKind)}, got {self.norm!r}")
        _check_int("norm_groups", self.norm_groups, 1)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float):
            raise TypeError(f"dropout must be a float, got {type(self.dropout).__name__}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        _check_int("conv1_kernel", self.conv1_kernel, 1)
        _check_int("conv1_stride", self.conv1_stride, 1)
        if not isinstance(self.no_max_pool, bool):
            raise TypeError(f"no_max_pool must be a bool, got {type(self.no_max_pool).__name__}")
        if self.architecture == UNET:
            self._validate_unet()
        else:
            self._validate_resnet()

    def _validate_unet(self) -> None:
        if len(self.channels) < 2:
            raise ValueError(f"channels needs at least 2 levels for a UNet, got {self.channels}")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides must have len(channels) - 1 = {len(self.channels) - 1} entries, "
                f"got {len(self.strides)}"
            )
        if self.norm == GROUP:
            bad = [c for c in self.channels if c % self.norm_groups]
            if bad:
                raise ValueError(
                    f"norm_groups={self.norm_groups} must divide every entry of channels; "
                    f"it does not divide {bad}"
                )

    def _validate_resnet(self) -> None:
        if self.norm != GROUP:
            raise ValueError(f"norm must be {GROUP!r} for {self.architecture}, got {self.norm!r}")
        if RESNET_PLANES[0] % self.norm_groups:
            raise ValueError(
                f"norm_groups={self.norm_groups} must divide the ResNet widths {RESNET_PLANES}"
            )


_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelInit(BaseModel):
    """`[run.model.init]`: the starting weights of a study, approved with its config.

    `path`: a state-dict checkpoint (`.pt`, as `consortia model pretrain` writes it, or a
    dict holding it under `"model"` or `"state_dict"`) or an unpacked MONAI bundle folder
    (its `models/model.pt`); absolute, or relative to the run config file. `sha256`: the
    SHA-256 of the weights as they travel, the float32 values in the model factory's
    state-dict order (`consortia model pretrain` and `consortia model hash` print it).
    Because `sha256` is part of the run config, the config hash every site approves
    covers it: the server refuses a file whose weights hash otherwise, and each site
    refuses a round-1 model that is not these weights.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, Field(min_length=1, max_length=4096)]
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256.fullmatch(value):
            raise ValueError(
                "must be the 64 lowercase hex digits of the weights' SHA-256 (as "
                "`consortia model pretrain` or `consortia model hash` print it)"
            )
        return value

    def location(self, config_dir: Path | None) -> Path:
        """Where the file is: `path` itself when absolute, else under `config_dir` (the
        run config's folder); a relative path without that folder is an error."""
        path = Path(self.path)
        if path.is_absolute():
            return path
        if config_dir is None:
            raise ConfigError(
                f"model.init.path {self.path!r} is relative and the run config's folder is "
                "not known here (give an absolute path)"
            )
        return config_dir / path
