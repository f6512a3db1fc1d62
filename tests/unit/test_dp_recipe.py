"""The DP recipe keeps DP-SGD exact: virtual batches and augmentation multiplicity give the
clipped sum of a reference written here with plain per-example torch loops, and the same
privacy accounting as plain DP-SGD; the EMA, the parameter subset and the optimiser
override change the weights, never the spend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consortia.client.data.site_data import SiteArrays
from consortia.client.privacy.dp_engine import make_private_step
from consortia.client.privacy.dp_recipe import WeightAverage, frozen_except, parameter_group
from consortia.client.privacy.dp_training import DPRound, train_local_dp
from consortia.client.privacy.per_sample_clipping import FusedClipper
from consortia.common.config.privacy_settings import DPRecipeSettings, SamplePrivacySettings
from consortia.common.config.settings import Task
from consortia.common.networks.models import ModelSettings, build_model
from consortia.common.privacy.accounting import epsilon_of, poisson_plan
from consortia.common.privacy.spend import PrivacySpend

CLIP = 0.05  # small enough that most examples are clipped


def _small_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 3, 2, stride=2),
        nn.Flatten(),
        nn.Linear(3 * 12 * 12, 3),
    )


def _reference(
    model: nn.Module, rows: torch.Tensor, targets: torch.Tensor, copies: int
) -> list[torch.Tensor]:
    """sum_i clip_C(mean_k grad loss(x_ik)), one example and one copy at a time."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in parameters]
    loss_fn = nn.CrossEntropyLoss()
    for start in range(0, len(rows), copies):
        grads = [torch.zeros_like(p) for p in parameters]
        for row in range(start, start + copies):
            loss = loss_fn(model(rows[row : row + 1]), targets[row : row + 1])
            for acc, g in zip(grads, torch.autograd.grad(loss, parameters), strict=True):
                acc += g / copies
        norm = torch.stack([g.square().sum() for g in grads]).sum().sqrt()
        factor = min(1.0, CLIP / (float(norm) + 1e-6))
        for acc, g in zip(total, grads, strict=True):
            acc += factor * g
    return total


def _rows(examples: int, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(examples * copies, 1, 6, 6, generator=generator)
    labels = torch.randint(0, 3, (examples,), generator=generator)
    return images, labels.repeat_interleave(copies)


@pytest.mark.parametrize("strategy", ["ghost", "formed"])
@pytest.mark.parametrize("copies", [1, 3])
def test_multiplicity_clipped_sum_equals_the_reference(strategy: str, copies: int) -> None:
    model = _small_model()
    rows, targets = _rows(5, copies)
    expected = _reference(model, rows, targets, copies)
    clipper = FusedClipper(model, CLIP, strategy=strategy)  # type: ignore[arg-type]
    clipper.step(rows, lambda out: nn.functional.cross_entropy(out, targets), group=copies)
    clipper.close()
    for parameter, want in zip(model.parameters(), expected, strict=True):
        assert parameter.grad is not None
        torch.testing.assert_close(parameter.grad, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["fused", "hooks"])
def test_virtual_batch_with_multiplicity_equals_the_reference(mode: str) -> None:
    """A logical batch of 8 examples x 2 copies in micro-batches of 3 examples: after the
    one (noise-free) step, p.grad is the reference clipped sum over the expected batch."""
    examples, copies = 8, 2
    model = _small_model()
    rows, targets = _rows(examples, copies)
    expected = _reference(model, rows, targets, copies)
    dataset = TensorDataset(torch.zeros(examples, 1, 6, 6), torch.zeros(examples))
    engine = PrivacyEngine(accountant="rdp")
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        nn.CrossEntropyLoss(),
        DataLoader(dataset, batch_size=examples),  # q = 1: expected batch 8
        engine=engine,
        noise_multiplier=0.0,
        max_grad_norm=CLIP,
        mode=mode,
    )
    examples_in = rows[::copies]  # one row per example: prepare makes the copies
    labels_in = targets[::copies]
    offsets = {"next": 0}

    def prepare(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = offsets["next"]
        offsets["next"] += len(images) * copies
        return rows[start : offsets["next"]], labels.repeat_interleave(copies)

    step.logical_step(examples_in, labels_in, examples_per_chunk=3, group=copies, prepare=prepare)
    assert len(engine.accountant.history) == 1 and engine.accountant.history[0][2] == 1
    for parameter, want in zip(model.parameters(), expected, strict=True):
        assert parameter.grad is not None
        torch.testing.assert_close(parameter.grad * examples, want, rtol=1e-4, atol=1e-6)
    step.close()


def _segmentation_data(cases: int) -> SiteArrays:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(cases, 1, 16, 16)).astype(np.float32)
    labels = (images[:, 0] > 0.5).astype(np.int64)
    return SiteArrays(images, labels)


def _train(recipe: DPRecipeSettings, batch_size: int) -> tuple[nn.Module, PrivacySpend]:
    torch.manual_seed(0)
    model = build_model(
        ModelSettings(architecture="unet", channels=(4, 8), strides=(2,), norm_groups=2)
    )
    dp = DPRound(1.2, 1.0, 1e-5, "rdp", history=((1.5, 0.25, 4),), recipe=recipe)
    _, spend = train_local_dp(
        model,
        _segmentation_data(40),
        Task.SEGMENTATION,
        epochs=2,
        batch_size=batch_size,
        learning_rate=1e-3,
        device=torch.device("cpu"),
        dp=dp,
    )
    return model, spend


def test_virtual_batches_and_multiplicity_spend_what_plain_dp_sgd_spends() -> None:
    """Plain DP-SGD at batch 16 and the recipe (logical 16 from a training batch of 4,
    micro-batches of 4 rows, 2 copies, EMA, norm layers only): same sigma, q, steps and
    epsilon, the accountant's own figure for that history."""
    _, plain = _train(DPRecipeSettings(), batch_size=16)
    recipe = DPRecipeSettings(
        batch_size=16, augmentation_multiplicity=2, ema_decay=0.9, trainable=("norm",)
    )
    model, spend = _train(recipe, batch_size=4)
    for name in ("noise_multiplier", "sample_rate", "steps", "epsilon", "run_epsilon"):
        assert getattr(spend, name) == getattr(plain, name), name
    poisson = poisson_plan(40, 16)
    assert spend.sample_rate == poisson.sample_rate == 1.0 / math.ceil(40 / 16)
    assert spend.steps == 2 * poisson.steps_per_epoch
    history = [(1.5, 0.25, 4), (1.2, spend.sample_rate, spend.steps)]
    assert spend.epsilon == pytest.approx(epsilon_of(history, 1e-5, "rdp"), rel=1e-12)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def test_only_the_named_subset_trains() -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelSettings(
            architecture="unet", channels=(4, 8), strides=(2,), num_res_units=0, norm_groups=2
        )
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = set(parameter_group(model, "norm"))
    head = parameter_group(model, "head")
    assert norms and all(".adn.N." in name for name in norms)
    assert head == ["model.2.conv.weight", "model.2.conv.bias"]
    decoder = parameter_group(model, "decoder")
    assert "model.2.conv.weight" in decoder and "model.0.conv.weight" not in decoder
    dp = DPRound(1.0, 1.0, 1e-5, "rdp", recipe=DPRecipeSettings(trainable=("norm",)))
    train_local_dp(
        model,
        _segmentation_data(24),
        Task.SEGMENTATION,
        epochs=1,
        batch_size=8,
        learning_rate=1e-2,
        device=torch.device("cpu"),
        dp=dp,
    )
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= norms
    resnet = build_model(ModelSettings(architecture="resnet18", out_channels=2, norm_groups=8))
    with (
        pytest.raises(ValueError, match="'decoder' selects no parameter"),
        frozen_except(resnet, ("decoder",)),
    ):
        pass


def test_weight_average_follows_the_iterates() -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update()  # warm-up decay min(0.5, 2/11): 0 -> 9/11
    average.copy_to_model()
    torch.testing.assert_close(model.weight, torch.full((1, 2), 9 / 11))


def test_recipe_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="physical_batch_size 2 is smaller"):
        DPRecipeSettings(physical_batch_size=2, augmentation_multiplicity=4)
    with pytest.raises(ValidationError, match="trainable names a group twice"):
        DPRecipeSettings(trainable=("norm", "norm"))
    with pytest.raises(ValidationError):
        SamplePrivacySettings.model_validate({"recipe": {"trainable": ["encoder"]}})
    with pytest.raises(ValidationError):
        SamplePrivacySettings.model_validate({"recipe": {"ema_decay": 1.0}})
    settings = SamplePrivacySettings.model_validate(
        {"recipe": {"batch_size": 64, "augmentation_multiplicity": 4}}
    )
    assert settings.recipe.logical_batch_size(16) == 64
    assert settings.recipe.examples_per_micro_batch(16) == 4
