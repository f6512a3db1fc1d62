"""DP-SGD at a site: the fused clipping engine against Opacus' per-example gradients,
Poisson sampling, accountant continuity, empty batches, and a plain model afterwards."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import GradSampleModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consortia.client.data.site_data import SiteArrays
from consortia.client.privacy.dp_engine import PrivateStep, make_private_step, resolve_mode
from consortia.client.privacy.dp_training import DPRound, train_local_dp
from consortia.client.privacy.per_sample_clipping import (
    FusedClipper,
    UnsupportedModelError,
    unsupported_layers,
)
from consortia.client.training.trainer import loss_function
from consortia.common.config.settings import Task
from consortia.common.networks.models import ModelSettings, build_model

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Using a non-full backward hook"),
]

CPU = torch.device("cpu")
TINY_UNET = ModelSettings("unet", channels=(4, 8, 16), strides=(2, 2), norm_groups=4)
TINY_UNET_3D = ModelSettings(
    "unet", spatial_dims=3, channels=(4, 8), strides=(2,), norm="instance", num_res_units=0
)
TINY_RESNET = ModelSettings("resnet18", conv1_kernel=3, conv1_stride=1, no_max_pool=True)


class Zoo(nn.Module):
    """Every rule. With strategy "auto": per-example gradients formed where the layer's
    output is large for its weights (first conv, last transposed conv, last linear), ghost
    norms where it is small (strided conv to 2x2, transposed conv from 2x2, wide linear)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.formed = conv(1, 4, 3, padding=1)  # T=8^d, L=4, R=9 or 27: formed
        self.norm = nn.GroupNorm(2, 4)
        self.ghost = conv(4, 64, 3, stride=4, padding=1)  # T=2^d, L=64, R=36 or 108: ghost
        self.up_ghost = up(64, 8, 3, stride=2, padding=1, output_padding=1)  # T=2^d: ghost
        self.up_formed = up(8, 2, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.wide = nn.Linear(2 * 8**dims, 32)  # T=1, L=32, R=128 or 1024: ghost
        self.small = nn.Linear(32, 2)  # r = 34/64: timed; (2, 2) below: r = 1, formed
        self.last = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.formed(x)))
        x = torch.relu(self.up_ghost(torch.relu(self.ghost(x))))
        x = self.up_formed(x).flatten(1)
        return self.last(torch.tanh(self.small(torch.relu(self.wide(x)))))


def _reference(
    model: nn.Module, x: torch.Tensor, loss_of: Any, max_grad_norm: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Opacus' per-example gradients (hooks; functorch for transposed convolutions) and its
    DPOptimizer's clipping arithmetic: per-example norms and the clipped sums."""
    wrapped = GradSampleModule(model)
    loss_of(wrapped(x)).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    samples = [p.grad_sample for p in params]  # type: ignore[attr-defined]
    norms = torch.stack([g.reshape(len(x), -1).norm(2, dim=-1) for g in samples], 1).norm(dim=1)
    clip = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    sums = [torch.einsum("i,i...", clip, g) for g in samples]
    wrapped._close()
    for p in params:
        p.grad = None
    return norms, sums


def _case(name: str) -> tuple[nn.Module, torch.Tensor, Any]:
    torch.manual_seed(0)
    if name.startswith("zoo"):
        dims = int(name[-2])
        x = torch.randn(5, 1, *([8] * dims), dtype=torch.float64)
        y = torch.randint(0, 2, (5,))
        return Zoo(dims).double(), x, lambda out: nn.functional.cross_entropy(out, y)
    settings, task, size = {
        "unet-2d": (TINY_UNET, Task.SEGMENTATION, 16),
        "unet-3d-instance": (TINY_UNET_3D, Task.SEGMENTATION, 8),
        "resnet18": (TINY_RESNET, Task.CLASSIFICATION, 8),
    }[name]
    x = torch.randn(4, 1, *([size] * settings.spatial_dims), dtype=torch.float64)
    if task is Task.SEGMENTATION:
        y = torch.randint(0, 2, (4, 1, *x.shape[2:]))
    else:
        y = torch.randint(0, 2, (4,))
    criterion = loss_function(task)
    return build_model(settings).double(), x, lambda out: criterion(out, y)


@pytest.mark.parametrize(
    ("name", "max_grad_norm", "strategy"),  # 1e-3: every example clipped; 1e3: none
    [
        ("zoo-2d", 1e-3, "ghost"),
        ("zoo-2d", 1e-3, "formed"),
        ("zoo-2d", 1e3, "auto"),
        ("zoo-3d", 1e-3, "ghost"),
        ("zoo-3d", 1e-3, "formed"),
        ("unet-2d", 1e-3, "auto"),
        ("unet-2d", 1e3, "auto"),
        ("unet-3d-instance", 1e-3, "auto"),
        ("resnet18", 1e-3, "auto"),
    ],
)
def test_fused_clipping_equals_opacus(name: str, max_grad_norm: float, strategy: Any) -> None:
    model, x, loss_of = _case(name)
    norms, sums = _reference(model, x, loss_of, max_grad_norm)
    clipper = FusedClipper(model, max_grad_norm, strategy=strategy)
    clipper.step(x, loss_of)
    clipper.close()
    assert clipper.per_sample_norms is not None
    torch.testing.assert_close(clipper.per_sample_norms, norms, rtol=1e-10, atol=0)
    scale = max(float(s.abs().max()) for s in sums)
    params = [p for p in model.parameters() if p.requires_grad]
    for parameter, expected in zip(params, sums, strict=True):
        assert parameter.grad is not None
        torch.testing.assert_close(parameter.grad, expected, rtol=0, atol=1e-10 * scale)
    if max_grad_norm < 1:  # every example's contribution has norm C (to Opacus' 1e-6)
        assert torch.all(norms > max_grad_norm)


def test_fused_step_equals_opacus_step() -> None:
    """Noise 0, same weights, same batch: the privatized gradient the optimizer applies."""
    grads = {}
    x = torch.randn(6, 1, 16, 16)
    y = torch.randint(0, 2, (6, 1, 16, 16))
    for mode in ("fused", "hooks"):
        torch.manual_seed(0)
        model = build_model(TINY_UNET)
        step = _private_step(model, x, y, Task.SEGMENTATION, mode, noise=0.0, batch_size=3)
        assert step.mode == mode
        step(x, y)
        grads[mode] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        step.close()
    assert len(grads["fused"]) == len(grads["hooks"]) == len(list(model.parameters()))
    scale = max(float(g.abs().max()) for g in grads["hooks"])
    for fused, hooks in zip(grads["fused"], grads["hooks"], strict=True):
        torch.testing.assert_close(fused, hooks, rtol=0, atol=1e-5 * scale)


def _private_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: Task,
    mode: str,
    *,
    noise: float = 1.0,
    batch_size: int = 2,
    engine: PrivacyEngine | None = None,
) -> PrivateStep:
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    return make_private_step(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        loss_function(task),
        loader,
        engine=engine or PrivacyEngine(accountant="rdp"),
        noise_multiplier=noise,
        max_grad_norm=1.0,
        mode=mode,
    )


@pytest.mark.parametrize("mode", ["fused", "hooks"])
def test_poisson_loader_and_empty_batch_step(mode: str) -> None:
    torch.manual_seed(0)
    model = build_model(TINY_UNET)
    x, y = torch.randn(7, 1, 8, 8), torch.randint(0, 2, (7, 1, 8, 8))
    engine = PrivacyEngine(accountant="rdp")
    step = _private_step(model, x, y, Task.SEGMENTATION, mode, batch_size=3, engine=engine)
    assert isinstance(step.loader, DPDataLoader)
    assert step.loader.sample_rate == pytest.approx(1 / math.ceil(7 / 3))
    before = [p.detach().clone() for p in model.parameters()]
    assert step(x[:0], y[:0]) is None  # an empty Poisson batch: noise only, still a step
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert engine.accountant.history == [(1.0, pytest.approx(1 / 3), 1)]
    assert step(x[:3], y[:3]) is not None
    assert engine.accountant.history == [(1.0, pytest.approx(1 / 3), 2)]
    step.close()


def _arrays(task: Task, n: int, size: int = 16) -> SiteArrays:
    rng = np.random.default_rng(0)
    images = rng.random((n, 1, size, size), dtype=np.float32)
    if task is Task.SEGMENTATION:
        return SiteArrays(images, (images[:, 0] > 0.7).astype(np.int64))
    return SiteArrays(images, rng.integers(0, 2, n).astype(np.int64))


def _round(mode: str = "auto", history: tuple[tuple[float, float, int], ...] = ()) -> DPRound:
    return DPRound(1.1, 1.0, 1e-5, "rdp", history=history, grad_sample_mode=mode)


def _assert_plain(model: nn.Module, keys: list[str]) -> None:
    assert list(model.state_dict()) == keys
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks and not module._backward_pre_hooks
        assert not hasattr(module, "activations")
    for parameter in model.parameters():
        assert parameter.requires_grad and parameter.grad is None
        for name in ("grad_sample", "summed_grad", "_forward_counter", "_norm_sample"):
            assert not hasattr(parameter, name), name


@pytest.mark.parametrize(
    ("settings", "task", "mode"),
    [
        (TINY_UNET, Task.SEGMENTATION, "auto"),
        (TINY_UNET, Task.SEGMENTATION, "hooks"),
        (TINY_RESNET, Task.CLASSIFICATION, "auto"),
    ],
)
def test_train_local_dp_leaves_plain_model(settings: ModelSettings, task: Task, mode: str) -> None:
    model = build_model(settings)
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result, spend = train_local_dp(
        model,
        _arrays(task, 10),
        task,
        epochs=1,
        batch_size=4,
        learning_rate=1e-3,
        device=CPU,
        dp=_round(mode),
    )
    _assert_plain(model, keys)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert spend.sample_rate == pytest.approx(1 / math.ceil(10 / 4))
    assert spend.steps == 3 and math.isfinite(result.mean_loss)
    assert resolve_mode(model, mode) == ("fused" if mode == "auto" else mode)


def test_accountant_continues_across_rounds() -> None:
    model, data = build_model(TINY_UNET), _arrays(Task.SEGMENTATION, 6, size=8)
    kwargs: dict[str, Any] = {"batch_size": 2, "learning_rate": 1e-3, "device": CPU}
    _, first = train_local_dp(model, data, Task.SEGMENTATION, epochs=2, dp=_round(), **kwargs)
    _, second = train_local_dp(
        model,
        data,
        Task.SEGMENTATION,
        epochs=1,
        dp=_round(history=(first.history_entry(),)),
        **kwargs,
    )
    assert (first.steps, second.steps) == (6, 3)
    assert first.sample_rate == second.sample_rate == pytest.approx(1 / 3)
    one = RDPAccountant()
    one.history = [(1.1, 1 / 3, 9)]
    assert second.epsilon == pytest.approx(one.get_epsilon(delta=1e-5), rel=1e-9)
    assert second.epsilon > first.epsilon


def test_empty_poisson_batches_are_steps() -> None:
    # 3 examples, batch size 1: q = 1/3, and a batch is empty with probability (2/3)^3.
    model = build_model(TINY_UNET)
    data = _arrays(Task.SEGMENTATION, 3, size=8)
    result, spend = train_local_dp(
        model,
        data,
        Task.SEGMENTATION,
        epochs=10,
        batch_size=1,
        learning_rate=1e-3,
        device=CPU,
        dp=_round(),
    )
    assert spend.steps == 30  # 30 steps counted, empty ones included
    assert math.isfinite(result.mean_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_ghost_clipping_refuses_a_batch_mean_loss() -> None:
    # MONAI's DiceCELoss ignores reduction="none"; Opacus' ghost clipping would then clip
    # with the batch's mean factor. The step refuses instead of leaking.
    with pytest.raises(ValueError, match="one loss per example"):
        train_local_dp(
            build_model(TINY_UNET),
            _arrays(Task.SEGMENTATION, 8),
            Task.SEGMENTATION,
            epochs=1,
            batch_size=8,
            learning_rate=1e-3,
            device=CPU,
            dp=_round("ghost"),
        )


def test_unknown_mode_and_unsupported_layers() -> None:
    model = build_model(TINY_UNET)
    with pytest.raises(ValueError, match="grad_sample_mode"):
        resolve_mode(model, "fast")
    with_layer_norm = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert unsupported_layers(with_layer_norm) == ["1: no per-example rule for LayerNorm"]
    assert resolve_mode(with_layer_norm, "auto") == "hooks"
    with pytest.raises(UnsupportedModelError, match="LayerNorm"):
        FusedClipper(with_layer_norm, 1.0)
    shared = nn.Linear(4, 4)
    assert unsupported_layers(nn.Sequential(shared, shared)) == [
        "1.weight: shared with another layer",
        "1.bias: shared with another layer",
    ]


def test_reused_layer_is_refused() -> None:
    layer = nn.Linear(4, 4)
    clipper = FusedClipper(layer, 1.0)
    with pytest.raises(RuntimeError, match="ran twice"):
        clipper.step(torch.randn(3, 4), lambda out: layer(out).sum())
    clipper.close()
    assert all(p.requires_grad for p in layer.parameters())


def test_bfloat16_autocast_clips_in_float32() -> None:
    model, x, loss_of = _case("resnet18")
    model.float()
    x = x.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        clipper = FusedClipper(model, 1e-3)
        clipper.step(x, loss_of)
    clipper.close()
    assert clipper.per_sample_norms is not None
    assert clipper.per_sample_norms.dtype == torch.float32
    total = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert total.dtype == torch.float32
    # Each of the 4 examples contributes at most C = 1e-3 after clipping.
    assert float(total.norm()) <= 4 * 1e-3 * (1 + 1e-5)


@pytest.mark.parametrize(
    "settings",
    [
        ModelSettings("unet"),
        ModelSettings("unet", spatial_dims=3, norm="instance"),
        ModelSettings("resnet18", dropout=0.1),
        ModelSettings("resnet34", spatial_dims=3),
    ],
)
def test_every_model_takes_the_fused_engine(settings: ModelSettings) -> None:
    # A layer without a rule would silently fall back to Opacus' (slower) hooks.
    assert unsupported_layers(build_model(settings)) == []
