"""Tests for consortia.common.networks.models: shapes, Opacus compatibility, architecture
contract."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from consortia.common.networks.models import (
    ModelSettings,
    NoInplaceResNetBlock,
    build_model,
    model_fingerprint,
)

SMALL_UNET: dict[str, Any] = {"channels": (8, 16, 32), "strides": (2, 2)}
SMALL_STEM: dict[str, Any] = {"conv1_kernel": 3, "conv1_stride": 1, "no_max_pool": True}

# (settings, spatial size of the test input)
CASES: dict[str, tuple[ModelSettings, int]] = {
    "unet-2d-32": (ModelSettings("unet", **SMALL_UNET), 32),
    "unet-2d-64-default": (ModelSettings("unet", out_channels=3), 64),
    "unet-2d-instance": (ModelSettings("unet", norm="instance", num_res_units=0), 32),
    "unet-3d-16": (ModelSettings("unet", spatial_dims=3, in_channels=2, **SMALL_UNET), 16),
    "unet-3d-32": (ModelSettings("unet", spatial_dims=3, channels=(8, 16), strides=(2,)), 32),
    "resnet18-2d-32": (ModelSettings("resnet18", out_channels=3, **SMALL_STEM), 32),
    "resnet18-2d-64": (ModelSettings("resnet18", in_channels=3), 64),
    "resnet18-3d-16": (ModelSettings("resnet18", spatial_dims=3), 16),
    "resnet34-2d-32": (ModelSettings("resnet34", dropout=0.1), 32),
    "resnet34-3d-16": (ModelSettings("resnet34", spatial_dims=3, out_channels=4), 16),
}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(settings) for name, (settings, _) in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_shape(models: dict[str, nn.Module], name: str) -> None:
    settings, size = CASES[name]
    model = models[name]
    x = torch.randn(2, settings.in_channels, *([size] * settings.spatial_dims))
    with torch.no_grad():
        y = model(x)
    if settings.architecture == "unet":
        assert y.shape == (2, settings.out_channels, *([size] * settings.spatial_dims))
    else:
        assert y.shape == (2, settings.out_channels)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list(CASES))
def test_opacus_compatible(models: dict[str, nn.Module], name: str) -> None:
    model = models[name]
    assert ModuleValidator.validate(model, strict=True) == []
    for module_name, module in model.named_modules():
        assert not isinstance(module, _BatchNorm), module_name
        assert not isinstance(module, nn.PReLU), module_name
        assert getattr(module, "inplace", False) is False, module_name


def test_resnet_norm_reaches_every_block(models: dict[str, nn.Module]) -> None:
    # MONAI's ResNet would put BatchNorm in every block and downsample shortcut.
    model = models["resnet18-2d-64"]
    blocks = [m for m in model.modules() if isinstance(m, NoInplaceResNetBlock)]
    assert len(blocks) == 8
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    # stem + 2 per block + 3 downsample shortcuts
    assert len(norms) == 1 + 2 * 8 + 3
    assert {m.num_groups for m in norms} == {8}
    assert isinstance(blocks[2].downsample, nn.Sequential)  # first block of layer2


def test_unet_group_counts(models: dict[str, nn.Module]) -> None:
    norms = [m for m in models["unet-2d-64-default"].modules() if isinstance(m, nn.GroupNorm)]
    # out_channels=3 is not divisible by 8: that single norm uses gcd(8, 3) = 1 group.
    assert sorted({(m.num_channels, m.num_groups) for m in norms}) == [
        (3, 1),
        (16, 8),
        (32, 8),
        (64, 8),
        (128, 8),
    ]


@pytest.mark.parametrize("name", ["unet-2d-32", "resnet18-2d-32", "unet-3d-16"])
def test_same_settings_same_contract(models: dict[str, nn.Module], name: str) -> None:
    settings, _ = CASES[name]
    first, second = models[name], build_model(settings)
    shapes_a = {k: (v.shape, v.dtype) for k, v in first.state_dict().items()}
    shapes_b = {k: (v.shape, v.dtype) for k, v in second.state_dict().items()}
    assert list(shapes_a) == list(shapes_b)
    assert shapes_a == shapes_b
    assert model_fingerprint(first) == model_fingerprint(second)
    assert len(model_fingerprint(first)) == 64
    second.load_state_dict(first.state_dict())  # strict load works


def test_fingerprint_distinguishes_architectures(models: dict[str, nn.Module]) -> None:
    prints = {model_fingerprint(m) for m in models.values()}
    assert len(prints) == len(models)


def test_fingerprint_ignores_values_and_dropout() -> None:
    base = ModelSettings("unet", **SMALL_UNET)
    a, b = build_model(base), build_model(base)
    with torch.no_grad():
        next(b.parameters()).add_(1.0)
    assert model_fingerprint(a) == model_fingerprint(b)
    plain = build_model(ModelSettings("resnet18", **SMALL_STEM))
    dropped = build_model(ModelSettings("resnet18", dropout=0.5, **SMALL_STEM))
    assert any(isinstance(m, nn.Dropout) for m in dropped.modules())
    assert model_fingerprint(plain) == model_fingerprint(dropped)


def test_lists_become_tuples() -> None:
    from_toml: dict[str, Any] = {"channels": [8, 16], "strides": [2]}  # TOML arrays are lists
    settings = ModelSettings("unet", **from_toml)
    assert settings.channels == (8, 16)
    assert settings.strides == (2,)
    assert hash(settings) == hash(ModelSettings("unet", channels=(8, 16), strides=(2,)))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"architecture": "vgg"}, "architecture"),
        ({"architecture": "unet", "spatial_dims": 1}, "spatial_dims"),
        ({"architecture": "unet", "in_channels": 0}, "in_channels"),
        ({"architecture": "unet", "out_channels": 1}, "out_channels"),
        ({"architecture": "resnet18", "out_channels": 1}, "out_channels"),
        ({"architecture": "unet", "channels": (16,), "strides": ()}, "channels"),
        ({"architecture": "unet", "channels": (16, 0), "strides": (2,)}, "channels"),
        ({"architecture": "unet", "strides": (2, 2)}, "strides"),
        ({"architecture": "unet", "num_res_units": -1}, "num_res_units"),
        ({"architecture": "unet", "channels": (12, 24), "strides": (2,)}, "norm_groups"),
        ({"architecture": "unet", "norm_groups": 0}, "norm_groups"),
        ({"architecture": "resnet34", "norm_groups": 48}, "norm_groups"),
        ({"architecture": "unet", "norm": "batch"}, "norm"),
        ({"architecture": "resnet18", "norm": "instance"}, "norm"),
        ({"architecture": "unet", "dropout": 1.0}, "dropout"),
        ({"architecture": "unet", "dropout": -0.1}, "dropout"),
        ({"architecture": "resnet18", "conv1_kernel": 0}, "conv1_kernel"),
        ({"architecture": "resnet18", "conv1_stride": 0}, "conv1_stride"),
    ],
)
def test_invalid_settings_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ModelSettings(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"in_channels": 1.5}, "in_channels"),
        ({"in_channels": True}, "in_channels"),
        ({"channels": "16,32"}, "channels"),
        ({"dropout": "0.1"}, "dropout"),
        ({"no_max_pool": 1}, "no_max_pool"),
    ],
)
def test_wrong_types_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(TypeError, match=field):
        ModelSettings("unet", **kwargs)


def test_build_model_rejects_non_settings() -> None:
    not_settings: Any = {"architecture": "unet"}
    with pytest.raises(TypeError, match="settings"):
        build_model(not_settings)


def _private_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    engine = PrivacyEngine(accountant="rdp")
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
    )
    xb, yb = next(iter(private_loader))
    private_optimizer.zero_grad()
    loss = nn.functional.cross_entropy(private_model(xb), yb)
    loss.backward()
    params = list(private_model.parameters())
    for p in params:
        assert p.grad_sample is not None
        assert p.grad_sample.shape == (2, *p.shape)
    private_optimizer.step()
    for p in params:
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
    assert math.isfinite(engine.get_epsilon(delta=1e-5))


@pytest.mark.filterwarnings("ignore:Secure RNG turned off")
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_step_resnet18_2d() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSettings("resnet18", **SMALL_STEM))
    _private_step(model, torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 1, 0]))


@pytest.mark.filterwarnings("ignore:Secure RNG turned off")
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_step_unet_2d() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSettings("unet", **SMALL_UNET))
    _private_step(model, torch.randn(4, 1, 32, 32), torch.randint(0, 2, (4, 32, 32)))
