"""One DP-SGD step, with the per-example clipping engine chosen per model.

:func:`make_private_step` turns a model, an optimizer and a data loader into a
:class:`PrivateStep`: a Poisson-sampling loader (Opacus' ``DPDataLoader``), Opacus'
noise-adding optimizer with the accountant's step hook, and one of these engines for the
sum of the clipped per-example gradients:

``"fused"``
    :class:`~consortia.client.privacy.per_sample_clipping.FusedClipper`: one backward pass without
    weight gradients, per-layer exact norms (formed or ghost), Opacus' clip factors. Opacus'
    ``DPOptimizerFastGradientClipping`` then adds the noise to that sum and divides by the
    expected batch size, exactly as for Opacus' own ghost clipping.
``"hooks"``, ``"functorch"``, ``"ew"``
    Opacus' ``PrivacyEngine.make_private`` with that ``grad_sample_mode`` (``"hooks"`` is
    Opacus' default: every per-example gradient is formed, functorch for layers without a
    rule).
``"ghost"``
    Opacus' ghost clipping. It needs a loss that returns one value per example when its
    ``reduction`` is ``"none"``; MONAI's ``DiceCELoss`` ignores that attribute and returns
    the batch mean, which would silently scale every example's gradient by the *mean* clip
    factor instead of its own, so each step checks the per-example shape and refuses.
``"auto"``
    ``"fused"`` when every trainable layer has a rule there, else ``"hooks"``.

A step may be *virtual* (:meth:`PrivateStep.logical_step`): the Poisson-sampled logical
batch is computed in micro-batches whose clipped sums Opacus' optimizer accumulates
(``signal_skip_step``, as Opacus' ``BatchMemoryManager`` does), then one noise draw, one
division by the expected logical batch, one update and one accountant step. With
augmentation multiplicity K every example comes as K consecutive rows whose gradients are
averaged before clipping (the fused engine groups them, Opacus' engines average the
per-example gradients they formed).

Every engine clips the *full* per-example gradient to ``max_grad_norm`` (flat clipping)
and adds noise of standard deviation ``noise_multiplier * max_grad_norm``; the guarantee
and its accounting do not depend on the choice.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader

from consortia.client.privacy.per_sample_clipping import FusedClipper, unsupported_layers

__all__ = ["GRAD_SAMPLE_MODES", "Prepare", "PrivateStep", "make_private_step", "resolve_mode"]

#: Accepted values of ``grad_sample_mode``.
GRAD_SAMPLE_MODES = ("auto", "fused", "hooks", "functorch", "ew", "ghost")
_OPACUS_ATTRIBUTES = ("grad_sample", "_forward_counter", "_current_grad_sample", "summed_grad")
_OPACUS_MODULE_ATTRIBUTES = ("activations", "max_batch_len", "ft_compute_sample_grad")

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]
#: A micro-batch of sampled examples -> the rows the model sees (K augmented copies of
#: each example, consecutive, on the training device).
Prepare = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def resolve_mode(model: nn.Module, mode: str) -> str:
    """The engine `mode` means for `model` (``"auto"`` -> ``"fused"`` or ``"hooks"``)."""
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {mode!r}")
    if mode == "auto":
        return "hooks" if unsupported_layers(model) else "fused"
    return mode


class PrivateStep:
    """A DP-SGD step on a fixed model, optimizer and engine; call :meth:`close` after the
    last step to leave a plain model (no hooks, no Opacus attributes)."""

    def __init__(
        self,
        *,
        model: nn.Module,
        wrapped: nn.Module,
        optimizer: DPOptimizer,
        criterion: Callable[..., Any],
        loader: DataLoader[Any],
        mode: str,
        clipper: FusedClipper | None,
        autocast: Autocast,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loader = loader
        self.mode = mode
        self._wrapped = wrapped
        self._criterion = criterion
        self._clipper = clipper
        self._autocast = autocast

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> float | None:
        """One step on a (Poisson-sampled) batch; returns its loss, or None if it was empty
        (an empty batch still takes a noise-only step: the accountant counts it)."""
        return self.logical_step(images, targets, examples_per_chunk=max(1, len(images)))

    def logical_step(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        examples_per_chunk: int,
        group: int = 1,
        prepare: Prepare | None = None,
    ) -> float | None:
        """One DP-SGD step on a Poisson-sampled logical batch, computed in micro-batches
        of at most `examples_per_chunk` examples, each turned into `group` rows per example
        by `prepare`: the clipped sums add up, then one noise draw, one update, one
        accountant step. Returns the mean loss, or None for an empty batch (which still
        takes its noise-only step)."""
        if examples_per_chunk < 1 or group < 1:
            raise ValueError("examples_per_chunk and group must be positive")
        self.optimizer.zero_grad(set_to_none=True)
        count = images.shape[0]
        if count == 0:
            self._empty_step()
            return None
        total, rows = 0.0, 0
        for start in range(0, count, examples_per_chunk):
            chunk = images[start : start + examples_per_chunk]
            labels = targets[start : start + examples_per_chunk]
            batch, batch_targets = prepare(chunk, labels) if prepare else (chunk, labels)
            if batch.shape[0] != chunk.shape[0] * group:
                raise ValueError(
                    f"prepare returned {batch.shape[0]} rows for {chunk.shape[0]} examples "
                    f"of {group} copies"
                )
            total += self._accumulate(batch, batch_targets, group) * batch.shape[0]
            rows += batch.shape[0]
            last = start + examples_per_chunk >= count
            if not last:  # clip and add up only: no noise, no update, no accountant step
                self.optimizer.signal_skip_step(do_skip=True)
            self.optimizer.step()
            if not last:
                self.optimizer.zero_grad(set_to_none=True)
        return total / rows

    def _accumulate(self, images: torch.Tensor, targets: torch.Tensor, group: int) -> float:
        """Forward and backward one micro-batch: its clipped per-example gradients (an
        example's gradient: the mean over its `group` rows) ready for the optimizer."""
        if self._clipper is not None:
            with self._autocast():
                return self._clipper.step(
                    images, lambda out: self._criterion(out, targets), group=group
                )
        if group > 1 and self.mode == "ghost":
            raise ValueError(
                "augmentation multiplicity needs per-example gradients; Opacus' ghost "
                "clipping forms none: use grad_sample_mode 'fused' or 'hooks'"
            )
        result = self._criterion(self._wrapped(images), targets)
        if self.mode == "ghost":
            per_example = result.loss_per_sample
            if per_example.shape != (images.shape[0],):
                raise ValueError(
                    "ghost clipping needs one loss per example, but the loss returned shape "
                    f"{tuple(per_example.shape)} for a batch of {images.shape[0]}; use "
                    "grad_sample_mode 'fused' or 'hooks'"
                )
        with warnings.catch_warnings():
            # The input needs no gradient; Opacus' hooks fire as intended.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            result.backward()
        if group > 1:
            for parameter in self.optimizer.params:
                rows = getattr(parameter, "grad_sample", None)
                if isinstance(rows, torch.Tensor):
                    examples = rows.reshape(rows.shape[0] // group, group, *rows.shape[1:])
                    parameter.grad_sample = examples.mean(dim=1)
        return float(result.detach())

    def _empty_step(self) -> None:
        for parameter in self.optimizer.params:
            if self.mode in ("fused", "ghost"):
                parameter.grad = torch.zeros_like(parameter)
            else:
                parameter.grad_sample = torch.zeros(
                    (0, *parameter.shape), dtype=parameter.dtype, device=parameter.device
                )
        self.optimizer.step()

    def close(self) -> None:
        """Remove every hook and per-example buffer; gradients are cleared."""
        if self._clipper is not None:
            self._clipper.close()
        else:
            remove = getattr(self._wrapped, "_close", None)
            if callable(remove):
                remove()
        for parameter in self.model.parameters():
            parameter.grad = None
            for name in _OPACUS_ATTRIBUTES:
                if hasattr(parameter, name):
                    delattr(parameter, name)
        for module in self.model.modules():
            for name in _OPACUS_MODULE_ATTRIBUTES:
                if name in module.__dict__:
                    delattr(module, name)


def _opacus_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[..., Any],
    loader: DataLoader[Any],
    engine: PrivacyEngine,
    noise_multiplier: float,
    max_grad_norm: float,
    mode: str,
    autocast: Autocast,
) -> PrivateStep:
    """Opacus' own engine `mode` (`PrivacyEngine.make_private`, Poisson sampling)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="opacus")
        private = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=mode,
        )
    wrapped, dp_optimizer = private[0], private[1]
    dp_criterion = private[2] if len(private) == 4 else criterion
    return PrivateStep(
        model=model,
        wrapped=wrapped,
        optimizer=dp_optimizer,
        criterion=dp_criterion,
        loader=private[-1],
        mode=mode,
        clipper=None,
        autocast=autocast,
    )


def _fused_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[..., Any],
    loader: DataLoader[Any],
    engine: PrivacyEngine,
    noise_multiplier: float,
    max_grad_norm: float,
    autocast: Autocast,
) -> PrivateStep:
    """Our fused engine, with what `PrivacyEngine.make_private` does for Poisson
    sampling and flat clipping."""
    engine.validate(module=model, optimizer=None, data_loader=None)
    dp_loader: DataLoader[Any] = DPDataLoader.from_data_loader(loader)
    sample_rate = 1.0 / len(dp_loader)
    expected_batch_size = int(len(dp_loader.dataset) * sample_rate)  # type: ignore[arg-type]
    dp_optimizer = DPOptimizerFastGradientClipping(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
    )
    dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return PrivateStep(
        model=model,
        wrapped=model,
        optimizer=dp_optimizer,
        criterion=criterion,
        loader=dp_loader,
        mode="fused",
        clipper=FusedClipper(model, max_grad_norm),
        autocast=autocast,
    )


def make_private_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[..., Any],
    loader: DataLoader[Any],
    *,
    engine: PrivacyEngine,
    noise_multiplier: float,
    max_grad_norm: float,
    mode: str = "auto",
    autocast: Autocast = contextlib.nullcontext,
) -> PrivateStep:
    """DP-SGD with Poisson sampling from `loader` (batch size = its expected size), the
    accountant of `engine` counting every step. `autocast` (a context factory, e.g.
    bfloat16 on CUDA) is used for the forward pass of the fused engine only."""
    resolved = resolve_mode(model, mode)
    if resolved == "fused":
        return _fused_step(
            model, optimizer, criterion, loader, engine, noise_multiplier, max_grad_norm, autocast
        )
    return _opacus_step(
        model,
        optimizer,
        criterion,
        loader,
        engine,
        noise_multiplier,
        max_grad_norm,
        resolved,
        autocast,
    )
