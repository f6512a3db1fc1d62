"""FedProx at the sites: the proximal term's value and gradient, weights held closer to the
global model with and without DP-SGD, the term added after clipping and noise, and an
unchanged privacy spend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consortia.client.data.site_data import SiteArrays
from consortia.client.privacy.dp_engine import make_private_step
from consortia.client.privacy.dp_training import DPRound, train_local_dp
from consortia.client.training.trainer import ProximalTerm, train_local
from consortia.common.config.settings import Task
from consortia.common.networks.models import ModelSettings, build_model

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Using a non-full backward hook"),
]

TINY_UNET = ModelSettings("unet", channels=(4, 8), strides=(2,), norm_groups=4)
CPU = torch.device("cpu")
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = [CPU, pytest.param(torch.device("cuda"), marks=NEEDS_CUDA)]


def _arrays(n: int = 8, size: int = 8) -> SiteArrays:
    images = np.random.default_rng(0).random((n, 1, size, size), dtype=np.float32)
    return SiteArrays(images, (images[:, 0] > 0.7).astype(np.int64))


def _global_model() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    model = build_model(TINY_UNET)
    return model, {name: p.detach().clone() for name, p in model.named_parameters()}


def _distance(model: nn.Module, weights: dict[str, torch.Tensor]) -> float:
    parts = [(p.detach().cpu() - weights[name]).flatten() for name, p in model.named_parameters()]
    return float(torch.cat(parts).norm())


def test_value_and_gradient_are_those_of_the_term() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)  # frozen: not part of the term
    anchors = [p.detach().clone() for p in model.parameters()]
    term = ProximalTerm(model, 0.3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    pairs = zip(model.parameters(), anchors, strict=True)
    trainable = [(p, a) for p, a in pairs if p.requires_grad]
    expected = 0.15 * sum(float((p.detach() - a).square().sum()) for p, a in trainable)
    assert term.value() == pytest.approx(expected, rel=1e-6)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    term.add_gradient()
    for p, a in trainable:
        torch.testing.assert_close(p.grad, 0.3 * (p.detach() - a))
    assert model[2].bias.grad is None
    assert len(list(model.buffers())) == 3  # BatchNorm statistics: buffers, untouched


@pytest.mark.parametrize("mu", [-0.1, math.nan, math.inf])
def test_bad_mu_is_refused(mu: float) -> None:
    with pytest.raises(ValueError, match="proximal_mu"):
        ProximalTerm(nn.Linear(2, 2), mu)


@pytest.mark.parametrize("device", DEVICES)
def test_train_local_stays_closer_to_the_global_model(device: torch.device) -> None:
    distances = {}
    for mu in (0.0, 100.0):
        model, weights = _global_model()
        result = train_local(
            model,
            _arrays(),
            Task.SEGMENTATION,
            epochs=3,
            batch_size=2,
            learning_rate=1e-2,
            seed=0,
            device=device,
            proximal_mu=mu,
        )
        assert math.isfinite(result.mean_loss)
        distances[mu] = _distance(model, weights)
    assert 0 < distances[100.0] < 0.25 * distances[0.0]


@pytest.mark.parametrize(
    ("device", "mode"),
    [(CPU, "auto"), (CPU, "hooks"), pytest.param(torch.device("cuda"), "auto", marks=NEEDS_CUDA)],
)
def test_train_local_dp_stays_closer_with_the_same_privacy_spend(
    device: torch.device, mode: str
) -> None:
    distances, spends = {}, {}
    for mu in (0.0, 100.0):
        model, weights = _global_model()
        _, spend = train_local_dp(
            model,
            _arrays(),
            Task.SEGMENTATION,
            epochs=3,
            batch_size=2,
            learning_rate=1e-2,
            device=device,
            dp=DPRound(1.0, 1.0, 1e-5, "rdp", grad_sample_mode=mode),
            proximal_mu=mu,
        )
        distances[mu], spends[mu] = _distance(model, weights), spend
    # Noise alone moves the weights ~1.1 from the global model; mu = 100 holds them ~0.15.
    assert 0 < distances[100.0] < 0.5 * distances[0.0]
    assert spends[100.0] == spends[0.0]  # epsilon, steps, sample rate, noise: all equal
    assert spends[0.0].steps == 12


@pytest.mark.parametrize("mode", ["fused", "hooks"])
@pytest.mark.parametrize("batch", [4, 0])
def test_term_is_added_after_clipping_and_noise_scaling(mode: str, batch: int) -> None:
    """SGD with lr 1, no noise and a tiny clipping bound: the data gradient is ~0, so the
    step is the proximal gradient alone. Clipped with the data, it would vanish; scaled
    with the noise by 1/expected batch size (2), the step would be halved."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    anchors = [p.detach().clone() for p in model.parameters()]
    term = ProximalTerm(model, 0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    term.attach(optimizer)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    engine = PrivacyEngine(accountant="rdp")
    step = make_private_step(
        model,
        optimizer,
        nn.CrossEntropyLoss(),
        DataLoader(TensorDataset(x, y), batch_size=2),
        engine=engine,
        noise_multiplier=0.0,
        max_grad_norm=1e-7,
        mode=mode,
    )
    step(x[:batch], y[:batch])
    step.close()
    for p, a in zip(model.parameters(), anchors, strict=True):
        torch.testing.assert_close(p.detach(), a + 0.5, rtol=0, atol=1e-6)
    assert engine.accountant.history == [(0.0, 0.5, 1)]
