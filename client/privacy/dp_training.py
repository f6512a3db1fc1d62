"""DP-SGD local training with Opacus: the training hook, kept apart from the privacy math
(`consortia.common.privacy.accounting`) and the bookkeeping (`consortia.common.privacy.ledger`).
The round's spend is a `consortia.common.privacy.spend.PrivacySpend`.

Every step samples each training example independently (Poisson sampling, as the
accountant assumes), clips each example's gradient to `max_grad_norm` and adds Gaussian
noise of standard deviation `noise_multiplier * max_grad_norm`. The sampling and the
noise draw from a seed taken from the operating system's CSPRNG each round, never from
the run's (server-known) seed. The Opacus accountant is restored from the data set's
history before training and read back after it, so epsilon keeps accumulating.

The sum of the clipped per-example gradients comes from the engine `DPRound.grad_sample_mode`
names (`consortia.client.privacy.dp_engine`); by default our fused engine, which computes the same
clipped sum as Opacus' per-example gradients at a fraction of the cost (docs/performance.md,
"Differential privacy overhead"). The noise, the optimizer and the accountant are Opacus'.

The round's recipe (`DPRound.recipe`, `[run.privacy.recipe]`) changes how it trains, never
what it spends: the Poisson sample rate is that of the logical batch (q = 1 / ceil(N / B)
for B = `recipe.batch_size`, the expected batch), each logical step is computed in
micro-batches (`PrivateStep.logical_step`), each sampled example may come as K augmented
copies whose gradients are averaged before clipping, only a named parameter subset may
train (`consortia.client.privacy.dp_recipe`), and the model the site sends may be the EMA
of its iterates. Epsilon depends on (sigma, q, steps) alone, as plain DP-SGD's.
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consortia.client.data.site_data import SiteArrays
from consortia.client.privacy.dp_engine import (
    Prepare,
    PrivateStep,
    make_private_step,
    resolve_mode,
)
from consortia.client.privacy.dp_recipe import WeightAverage, dp_optimiser, frozen_except
from consortia.client.training.trainer import (
    ProximalTerm,
    RoundRecipe,
    TrainResult,
    loss_function,
    normalize_images,
)
from consortia.common.config.privacy_settings import Accountant, DPRecipeSettings
from consortia.common.config.settings import Task
from consortia.common.networks.device import autocast
from consortia.common.privacy.accounting import HistoryEntry, epsilon_of, make_accountant
from consortia.common.privacy.spend import PrivacySpend

__all__ = ["DPRound", "GradSampleMode", "train_local_dp"]

#: The per-example clipping engine (`consortia.client.privacy.dp_engine`): "auto" (default: our
#: fused engine when every layer has a rule, else Opacus' "hooks"), "fused", or one of
#: Opacus' grad_sample_modes "hooks" (Opacus' default), "functorch", "ew", "ghost".
GradSampleMode = str


@dataclass(frozen=True)
class DPRound:
    """What one round of DP-SGD at a site uses."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: Accountant
    history: tuple[HistoryEntry, ...] = ()
    grad_sample_mode: GradSampleMode = "auto"
    #: The accountant history of this run's earlier rounds on the data set: the round's
    #: `run_epsilon` covers them and the round.
    run_history: tuple[HistoryEntry, ...] = ()
    #: Logical batch, micro-batches, multiplicity, EMA, trainable subset, optimiser.
    recipe: DPRecipeSettings = field(default_factory=DPRecipeSettings)


def train_local_dp(
    model: nn.Module,
    data: SiteArrays,
    task: Task,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    device: torch.device,
    dp: DPRound,
    proximal_mu: float = 0.0,
    recipe: RoundRecipe | None = None,
) -> tuple[TrainResult, PrivacySpend]:
    """`epochs` epochs of DP-SGD (`recipe` on the privatized gradients, default
    Adam at `learning_rate`, with `dp.recipe`'s optimiser where it sets one; the rate
    schedule touches no privacy accounting) on the training split; `model` holds the
    trained weights (or their EMA) afterwards (a plain module: same state_dict keys, no
    hooks, every parameter trainable again). `batch_size` is the run's training batch:
    the default logical batch and micro-batch of `dp.recipe`. With `proximal_mu` > 0,
    FedProx's term around the entry weights adds its gradient after clipping and noise
    (`ProximalTerm`): same privacy spend."""
    if len(data) == 0:
        raise ValueError("the training split is empty")
    resolve_mode(model, dp.grad_sample_mode)  # an unknown mode fails before any work
    torch.manual_seed(secrets.randbits(63))  # Poisson sampling and noise: unpredictable
    model.to(device).train()
    plan = dp_optimiser(recipe or RoundRecipe.constant(learning_rate), dp.recipe)
    with frozen_except(model, dp.recipe.trainable):
        return _train(model, data, task, plan, epochs, batch_size, device, dp, proximal_mu)


def _train(
    model: nn.Module,
    data: SiteArrays,
    task: Task,
    plan: RoundRecipe,
    epochs: int,
    batch_size: int,
    device: torch.device,
    dp: DPRound,
    proximal_mu: float,
) -> tuple[TrainResult, PrivacySpend]:
    optimizer = plan.build(model)
    # A step pre-hook of the wrapped optimizer: it runs after Opacus' DPOptimizer has
    # clipped, noised and averaged the data gradient (DPOptimizer.step -> pre_step ->
    # original_optimizer.step), for every engine and for empty Poisson batches alike.
    ProximalTerm(model, proximal_mu).attach(optimizer)
    dataset = TensorDataset(torch.from_numpy(data.images), torch.from_numpy(data.targets))
    # No seeded generator (unlike `trainer`'s loader): Opacus' Poisson sampler inherits
    # the loader's generator, and the batches must not be predictable from the run seed.
    # Its batch size is the logical batch: the expected Poisson batch of one step.
    logical = dp.recipe.logical_batch_size(batch_size)
    loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(dataset, batch_size=logical)
    engine = _engine(dp)
    steps_before = _steps(engine.accountant.history)
    step = make_private_step(
        model,
        optimizer,
        loss_function(task),
        loader,
        engine=engine,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        mode=dp.grad_sample_mode,
        autocast=lambda: autocast(device),
    )
    average = WeightAverage(model, dp.recipe.ema_decay)
    start = time.perf_counter()
    try:
        # Poisson batches: len(loader) steps an epoch
        mean_loss = _epochs(
            _Loop(step, plan, optimizer, task, device, average),
            dp.recipe,
            batch_size,
            epochs,
            epochs * len(loader),
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compute_s = time.perf_counter() - start
    finally:
        step.close()
    average.copy_to_model()  # post-processing of the released iterates
    steps = _steps(engine.accountant.history) - steps_before
    spend = _spend(dp, sample_rate=1.0 / len(loader), steps=steps)
    return TrainResult(len(data), mean_loss, compute_s), spend


def _engine(dp: DPRound) -> PrivacyEngine:
    """Opacus' engine with its accountant restored from the data set's history."""
    with warnings.catch_warnings():
        # Opacus' reminder about secure_mode: its CSPRNG (torchcsprng) is unmaintained;
        # the module docstring says where our randomness comes from instead.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=dp.accountant)
    engine.accountant = make_accountant(dp.accountant, dp.history)
    return engine


@dataclass(frozen=True)
class _Loop:
    """What every logical step of a round uses."""

    step: PrivateStep
    plan: RoundRecipe
    optimizer: torch.optim.Optimizer
    task: Task
    device: torch.device
    average: WeightAverage


def _prepare(loop: _Loop, copies: int) -> Prepare:
    """A micro-batch of sampled examples -> `copies` augmented rows per example, on the
    device (per example, after sampling: no effect on the accounting)."""
    augment = loop.plan.augmenter(secrets.randbits(63))

    def prepare(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if copies > 1:
            images = images.repeat_interleave(copies, dim=0)
            targets = targets.repeat_interleave(copies, dim=0)
        images, targets = augment(images, targets)
        return images.to(loop.device), targets.to(loop.device)

    return prepare


def _epochs(
    loop: _Loop, recipe: DPRecipeSettings, batch_size: int, epochs: int, expected_steps: int
) -> float:
    """Run `epochs` epochs of private logical steps (about `expected_steps` in all, for
    the rate schedule); the mean loss of the non-empty batches."""
    copies = recipe.augmentation_multiplicity
    per_chunk = recipe.examples_per_micro_batch(batch_size)
    prepare = _prepare(loop, copies)
    total_loss, batches, taken = 0.0, 0, 0
    for _ in range(epochs):
        for images, targets in loop.step.loader:
            loop.plan.set_rate(loop.optimizer, taken, expected_steps)
            taken += 1
            if len(images):  # an empty Poisson batch still takes its (noise) step
                images = normalize_images(images)
            if loop.task is Task.SEGMENTATION:
                targets = targets.unsqueeze(1)
            loss = loop.step.logical_step(
                images, targets, examples_per_chunk=per_chunk, group=copies, prepare=prepare
            )
            loop.average.update()
            if loss is not None:
                total_loss += loss
                batches += 1
    return total_loss / max(batches, 1)


def _spend(dp: DPRound, *, sample_rate: float, steps: int) -> PrivacySpend:
    """What the round spent: its steps, the data set's and this run's new totals."""
    this_round = (dp.noise_multiplier, sample_rate, steps)
    return PrivacySpend(
        noise_multiplier=dp.noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        delta=dp.delta,
        epsilon=epsilon_of([*dp.history, this_round], dp.delta, dp.accountant),
        run_epsilon=epsilon_of([*dp.run_history, this_round], dp.delta, dp.accountant),
        accountant=dp.accountant,
        max_grad_norm=dp.max_grad_norm,
    )


def _steps(history: Sequence[HistoryEntry]) -> int:
    return sum(int(entry[2]) for entry in history)
