"""The DP training recipe's parts that change no privacy accounting: the parameter subset a
site fine-tunes, the weights' exponential moving average it sends, and the DP rounds'
optimiser (`[run.privacy.recipe]`, `consortia.common.config.privacy_settings.DPRecipeSettings`).

- Fine-tuning a subset: the other parameters are frozen for the round (no gradient, no
  noise); every example's gradient over the trainable subset is clipped to C as a whole,
  so the sensitivity, and the accounting, are those of plain DP-SGD.
- The EMA is computed from the released iterates only (post-processing), with the usual
  warm-up ``decay_t = min(decay, (1 + t) / (10 + t))`` so that a round of a few steps is
  not dominated by its starting weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from consortia.client.training.trainer import RoundRecipe
from consortia.common.config.privacy_settings import DPRecipeSettings, ParameterGroup

__all__ = ["WeightAverage", "dp_optimiser", "frozen_except", "parameter_group"]

logger = logging.getLogger("consortia.client.privacy.dp_recipe")

_NORMS = (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm)
_UP_PATH = "2"  # MONAI UNet: every level is Sequential(down, SkipConnection(...), up)


def _is_decoder(name: str) -> bool:
    """A MONAI UNet parameter on the up-sampling path: its innermost level index is 2."""
    parts = name.split(".")
    levels = [parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("model", "submodule")]
    indices = [level for level in levels if level.isdigit()]
    return bool(indices) and indices[-1] == _UP_PATH and levels[-1].isdigit()


def parameter_group(model: nn.Module, group: ParameterGroup) -> list[str]:
    """The names of `model`'s parameters in `group` ("norm", "decoder", "head")."""
    names = [name for name, _ in model.named_parameters()]
    if group == "norm":
        return [
            f"{module_name}.{name}" if module_name else name
            for module_name, module in model.named_modules()
            if isinstance(module, _NORMS)
            for name, _ in module.named_parameters(recurse=False)
        ]
    if group == "decoder":
        return [name for name in names if _is_decoder(name)]
    if group == "head":
        if not names:
            return []
        owner = names[-1].rsplit(".", 1)[0]
        return [name for name in names if name.rsplit(".", 1)[0] == owner]
    raise ValueError(f"unknown parameter group {group!r}")


@contextmanager
def frozen_except(model: nn.Module, groups: Sequence[ParameterGroup]) -> Iterator[list[str]]:
    """Train only the parameters of `groups` (all of them when empty) inside the block;
    yields the trainable names. Raises ValueError naming a group that selects nothing."""
    if not groups:
        yield [name for name, _ in model.named_parameters()]
        return
    chosen: set[str] = set()
    for group in groups:
        names = parameter_group(model, group)
        if not names:
            raise ValueError(
                f"run.privacy.recipe.trainable: {group!r} selects no parameter of this model"
            )
        chosen.update(names)
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in chosen)
    logger.info(
        "DP fine-tuning %s: %d of %d parameters",
        "+".join(groups),
        sum(p.numel() for n, p in model.named_parameters() if n in chosen),
        sum(p.numel() for p in model.parameters()),
    )
    try:
        yield sorted(chosen)
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(before[name])


class WeightAverage:
    """An exponential moving average of `model`'s floating-point state (parameters and
    buffers), updated after every optimiser step; `decay` 0 keeps no average."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self._model = model
        self._average = (
            {
                key: value.detach().clone()
                for key, value in model.state_dict().items()
                if value.is_floating_point()
            }
            if decay > 0
            else {}
        )

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights into the average."""
        if not self._average:
            return
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        state = self._model.state_dict()
        for key, average in self._average.items():
            average.lerp_(state[key].detach().to(average.dtype), 1.0 - decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Put the average into the model (what the site then sends)."""
        if not self._average:
            return
        state = self._model.state_dict()
        for key, average in self._average.items():
            state[key].copy_(average.to(state[key].dtype))


def dp_optimiser(plan: RoundRecipe, recipe: DPRecipeSettings) -> RoundRecipe:
    """The round's optimiser under DP: `plan` with the recipe's optimiser and base rate,
    where it sets them (the schedule's shape and warm-up stay the run's)."""
    if recipe.optimizer is not None:
        plan = replace(plan, name=recipe.optimizer)
    if recipe.learning_rate is not None:
        plan = replace(plan, schedule=replace(plan.schedule, base=recipe.learning_rate))
    return plan
