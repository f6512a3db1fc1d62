"""Local training and evaluation at a site: plain PyTorch on the site's arrays.

FedProx (`ProximalTerm`): the local objective gains ``mu/2 * ||w - w_global||^2`` over
the trainable float parameters; its gradient ``mu * (w - w_global)`` is added to each
parameter's gradient just before the optimizer updates it (a step pre-hook on the torch
optimizer). Under DP-SGD that is after Opacus has clipped, noised and averaged the data
gradient: the term depends on no example, so it uses no clipping budget and changes no
privacy accounting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.hooks import RemovableHandle

from consortia.client.data.site_data import SiteArrays
from consortia.client.training.augment import BatchAugmenter
from consortia.client.training.classification_recipe import class_weighted_loss
from consortia.common.config.lr_schedule import Schedule
from consortia.common.config.plan_settings import PlanSettings
from consortia.common.config.settings import Task, TrainingSettings
from consortia.common.metrics.bootstrap import segmentation_replicates
from consortia.common.metrics.exact import (
    ClassificationMetricAccumulator,
    SegmentationMetricAccumulator,
)
from consortia.common.networks.device import autocast

__all__ = [
    "EvalResult",
    "ProximalTerm",
    "RoundRecipe",
    "TrainResult",
    "evaluate_local",
    "loss_function",
    "normalize_images",
    "prewarm",
    "train_local",
]


@dataclass(frozen=True)
class TrainResult:
    """What a site reports about its local training (no per-case data)."""

    num_examples: int
    mean_loss: float
    compute_s: float


@dataclass(frozen=True)
class EvalResult:
    """Sums and counts that the server combines exactly across sites."""

    sums: dict[str, float]
    histograms: dict[str, list[float]]
    compute_s: float
    # Segmentation, when asked: per bootstrap replicate, sums and counts of resampled
    # cases (`consortia.common.metrics.bootstrap`), for the server's confidence intervals.
    bootstrap: dict[str, list[float]] = field(default_factory=dict)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel z-score: removes each site's intensity scale and offset."""
    dims = tuple(range(2, images.ndim))
    mean = images.mean(dim=dims, keepdim=True)
    std = images.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (images - mean) / std


def prewarm() -> None:
    """Load what the first training step would load lazily (the first optimizer pulls in
    ~190 modules, about a second). Runs no kernels, so a process may fork after it."""
    parameter = nn.Parameter(torch.zeros(1))
    torch.optim.Adam([parameter], lr=1e-3)
    for task in Task:
        loss_function(task)


def loss_function(task: Task, *, batch_dice: bool = False) -> nn.Module:
    """The training loss of a task: a mean over the batch of per-example losses, as
    DP-SGD requires. `batch_dice` (without DP only) takes the Dice term over the whole
    batch instead, so a case without foreground still pulls false positives down; it
    couples the examples of a batch, which DP-SGD's per-example clipping cannot bound."""
    if task is Task.SEGMENTATION:
        # Background excluded from the Dice term: lesions cover a few % of the pixels.
        return DiceCELoss(
            to_onehot_y=True, softmax=True, include_background=False, batch=batch_dice
        )
    return nn.CrossEntropyLoss()


class ProximalTerm:
    """FedProx's ``mu/2 * ||w - w_global||^2``, anchored at the model's weights when made
    (the global model the round starts from). Covers the trainable floating-point
    parameters only (buffers such as normalisation statistics are not parameters)."""

    def __init__(self, model: nn.Module, mu: float) -> None:
        if not math.isfinite(mu) or mu < 0:
            raise ValueError(f"proximal_mu must be a finite number >= 0, got {mu}")
        self.mu = float(mu)
        # mu = 0: no term, and no copy of the weights either.
        self._pairs = [
            (parameter, parameter.detach().clone())
            for parameter in model.parameters()
            if self.mu > 0 and parameter.requires_grad and parameter.is_floating_point()
        ]

    @torch.no_grad()
    def value(self) -> float:
        """The term's current value."""
        total = sum(
            float((parameter - anchor).float().square().sum()) for parameter, anchor in self._pairs
        )
        return 0.5 * self.mu * total

    @torch.no_grad()
    def add_gradient(self) -> None:
        """Add ``mu * (w - w_global)`` to every gradient present (a parameter without one
        is left to the optimizer, which skips it)."""
        for parameter, anchor in self._pairs:
            if parameter.grad is not None:
                difference = parameter.detach() - anchor
                parameter.grad.add_(difference.to(parameter.grad.dtype), alpha=self.mu)

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Add the gradient at the start of each `optimizer.step()` (after Opacus' clipping
        and noise when `optimizer` is the one a DPOptimizer wraps). The hook lives as long
        as `optimizer`; the returned handle removes it earlier."""
        return optimizer.register_step_pre_hook(lambda *_: self.add_gradient())


@dataclass(frozen=True)
class RoundRecipe:
    """A round's local optimiser: the approved run's optimiser and learning-rate schedule
    at this round. Each step's rate continues the run's schedule (`Schedule`), so the
    rate anneals over the whole run although every round starts a fresh optimiser."""

    schedule: Schedule
    round: int = 1
    name: str = "adam"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    augment: bool = False
    flip_axes: tuple[int, ...] = ()
    class_weights: str = "none"
    # `[run.training] dice`: the Dice term over the whole batch (runs without DP only).
    batch_dice: bool = False
    # The approved `[run.plan]`: patch training and spatial augmentation (None: whole images).
    plan: PlanSettings | None = None

    @classmethod
    def constant(cls, learning_rate: float) -> RoundRecipe:
        """Adam at a constant rate (the behaviour before schedules)."""
        return cls(Schedule(learning_rate))

    @classmethod
    def for_round(
        cls,
        training: TrainingSettings,
        round_number: int,
        total_rounds: int,
        plan: PlanSettings | None = None,
    ) -> RoundRecipe:
        """The optimiser the approved `training` settings give round `round_number`, with
        the run's `plan` (patches and spatial augmentation) when it has one."""
        schedule = Schedule(
            training.learning_rate,
            training.schedule,
            total_rounds=total_rounds,
            warmup_rounds=min(training.warmup_rounds, total_rounds),
        )
        return cls(
            schedule,
            round=round_number,
            name=training.optimizer,
            momentum=training.momentum,
            nesterov=training.nesterov,
            weight_decay=training.weight_decay,
            augment=training.augment,
            flip_axes=tuple(training.flip_axes),
            class_weights=training.class_weights,
            batch_dice=training.dice == "batch",
            plan=plan,
        )

    def augmenter(self, seed: int) -> BatchAugmenter:
        """The round's random augmentation (inactive when the recipe asks for none)."""
        plan = self.plan
        return BatchAugmenter(
            intensity=self.augment,
            flip_axes=self.flip_axes,
            seed=seed,
            patch_size=None if plan is None else plan.patch_size,
            foreground_ratio=0.33 if plan is None else plan.foreground_ratio,
            spatial=plan is not None and plan.spatial_augment,
        )

    def loss(self, task: Task, data: SiteArrays) -> nn.Module:
        """The round's loss (training without DP): `loss_function(task)`, with the Dice
        term over the whole batch for `dice = "batch"`, class-weighted by the site's own
        training labels with `class_weights = "balanced"` (the weights never leave the site)."""
        if task is Task.CLASSIFICATION and self.class_weights == "balanced":
            return class_weighted_loss(data.targets)
        return loss_function(task, batch_dice=self.batch_dice)

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        """A fresh optimiser over `model`'s parameters at the round's first rate."""
        rate = self.schedule.rate(self.round)
        parameters = model.parameters()
        if self.name == "sgd":
            return torch.optim.SGD(
                parameters,
                lr=rate,
                momentum=self.momentum,
                nesterov=self.nesterov and self.momentum > 0,
                weight_decay=self.weight_decay,
            )
        if self.name == "adamw":
            return torch.optim.AdamW(parameters, lr=rate, weight_decay=self.weight_decay)
        if self.name == "adam":
            return torch.optim.Adam(parameters, lr=rate, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {self.name!r}")

    def set_rate(self, optimizer: torch.optim.Optimizer, step: int, steps: int) -> float:
        """Set the rate of local step `step` of `steps` (for a DP optimiser, pass the
        optimiser it wraps: they share parameter groups)."""
        rate = self.schedule.rate(self.round, step, steps)
        for group in optimizer.param_groups:
            group["lr"] = rate
        return rate


def _loader(data: SiteArrays, batch_size: int, shuffle: bool, seed: int) -> DataLoader[tuple]:
    dataset = TensorDataset(torch.from_numpy(data.images), torch.from_numpy(data.targets))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def train_local(
    model: nn.Module,
    data: SiteArrays,
    task: Task,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    device: torch.device,
    proximal_mu: float = 0.0,
    recipe: RoundRecipe | None = None,
) -> TrainResult:
    """Run `epochs` local epochs on the site's training split with `recipe` (the
    run's optimiser and schedule at this round; default Adam at `learning_rate`); with
    `proximal_mu` > 0 the objective adds FedProx's term around the weights `model` holds
    on entry (`ProximalTerm`). `mean_loss` is the task loss alone."""
    if len(data) == 0:
        raise ValueError("the training split is empty")
    torch.manual_seed(seed)
    model.to(device).train()
    plan = recipe or RoundRecipe.constant(learning_rate)
    optimizer = plan.build(model)
    ProximalTerm(model, proximal_mu).attach(optimizer)  # on the weights of the round start
    loss_fn = plan.loss(task, data)
    loader = _loader(data, batch_size, shuffle=True, seed=seed)
    steps = epochs * len(loader)
    augment = plan.augmenter(seed)
    start = time.perf_counter()
    total_loss, batches = 0.0, 0
    for _ in range(epochs):
        for images, targets in loader:
            images = normalize_images(images)
            if task is Task.SEGMENTATION:
                targets = targets.unsqueeze(1)
            images, targets = augment(images, targets)
            images, targets = images.to(device), targets.to(device)
            plan.set_rate(optimizer, batches, steps)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                loss = loss_fn(model(images), targets)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach())
            batches += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compute_s = time.perf_counter() - start
    return TrainResult(len(data), total_loss / max(batches, 1), compute_s)


def _inferer(plan: PlanSettings | None) -> Callable[[torch.Tensor, nn.Module], torch.Tensor]:
    """Whole-image inference: MONAI's sliding window over windows of the plan's patch
    size (Gaussian-weighted overlaps), or one forward pass without a plan."""
    if plan is None:
        return lambda images, model: model(images)
    inferer = SlidingWindowInferer(
        roi_size=plan.patch_size,
        sw_batch_size=4,
        overlap=plan.sliding_window_overlap,
        mode="gaussian",
    )

    def _infer(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
        logits = inferer(images, model)
        if not isinstance(logits, torch.Tensor):
            raise TypeError("the model must return one tensor of logits")
        return logits

    return _infer


@torch.no_grad()
def evaluate_local(
    model: nn.Module,
    data: SiteArrays,
    task: Task,
    *,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    surface_distances: bool = True,
    bootstrap: bool = False,
) -> EvalResult:
    """Metric sums and counts of `model` on the given split (nothing per case leaves);
    with `bootstrap`, also segmentation's bootstrap replicate sums and counts."""
    model.to(device).eval()
    start = time.perf_counter()
    loader = _loader(data, batch_size, shuffle=False, seed=0)
    if task is Task.SEGMENTATION:
        plan = data.plan
        seg = SegmentationMetricAccumulator(
            num_classes=num_classes,
            surface_distances=surface_distances,
            spacing=None if plan is None else tuple(plan.target_spacing),
        )
        infer = _inferer(plan)
        for images, targets in loader:
            with autocast(device):
                logits = infer(normalize_images(images.to(device)), model)
            seg.update(logits.float().argmax(dim=1).cpu(), targets)
        replicates = segmentation_replicates(seg.case_values()) if bootstrap else {}
        return EvalResult(seg.summary(), {}, time.perf_counter() - start, replicates)
    cls = ClassificationMetricAccumulator(num_classes=num_classes)
    for images, targets in loader:
        with autocast(device):
            logits = model(normalize_images(images.to(device)))
        cls.update(torch.softmax(logits.float(), dim=1).cpu(), targets)
    histograms = {
        key: list(np.asarray(value, dtype=float)) for key, value in cls.histograms().items()
    }
    return EvalResult(cls.summary(), histograms, time.perf_counter() - start)
