"""The learning rate of every local optimiser step, over the whole run (torch-free).

A federated run is one long optimisation cut into rounds. Each site restarts its local
optimiser every round, so a schedule that lives inside a round (or a constant rate) never
anneals. Here the rate is a function of the run's progress: round ``r`` of ``R`` with
``s`` of ``S`` local steps done is at progress ``((r - 1) + s / S) / R`` in ``[0, 1)``.

The site computes it from the approved run settings (`TrainingSettings`) and the round
number; the server sends neither a rate nor a schedule of its own, so it cannot push a
site to a rate outside the plan the site approved.

- ``constant``: ``base``.
- ``poly``: nnU-Net's ``base * (1 - progress) ** 0.9``.
- ``cosine``: ``base * 0.5 * (1 + cos(pi * progress))``.

With ``warmup_rounds`` > 0 the rate rises linearly from ``base / steps`` to the schedule's
value over the first ``warmup_rounds`` rounds (AdamW-style warm-up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["POLY_EXPONENT", "Schedule", "ScheduleName"]

ScheduleName = Literal["constant", "poly", "cosine"]
#: nnU-Net's polynomial decay exponent.
POLY_EXPONENT = 0.9


@dataclass(frozen=True)
class Schedule:
    """A run's learning-rate schedule; `rate(round, step, steps)` is one step's rate."""

    base: float
    name: ScheduleName = "constant"
    total_rounds: int = 1
    warmup_rounds: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base > 0):
            raise ValueError(f"learning rate must be a finite number > 0, got {self.base}")
        if self.name not in ("constant", "poly", "cosine"):
            raise ValueError(f"unknown learning-rate schedule {self.name!r}")
        if self.total_rounds < 1:
            raise ValueError(f"total_rounds must be >= 1, got {self.total_rounds}")
        if not 0 <= self.warmup_rounds <= self.total_rounds:
            raise ValueError(
                f"warmup_rounds must be in [0, total_rounds = {self.total_rounds}], "
                f"got {self.warmup_rounds}"
            )

    def progress(self, round_number: int, step: int, steps: int) -> float:
        """Where step `step` (0-based) of `steps` in round `round_number` lies in [0, 1)."""
        if round_number < 1:
            raise ValueError(f"round must be >= 1, got {round_number}")
        within = min(max(step, 0), max(steps, 1)) / max(steps, 1)
        return min((round_number - 1 + within) / self.total_rounds, 1.0)

    def rate(self, round_number: int, step: int = 0, steps: int = 1) -> float:
        """The learning rate of local step `step` of `steps` in round `round_number`."""
        progress = self.progress(round_number, step, steps)
        if self.name == "poly":
            value = self.base * (1.0 - progress) ** POLY_EXPONENT
        elif self.name == "cosine":
            value = self.base * 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            value = self.base
        if self.warmup_rounds:
            warm = progress * self.total_rounds / self.warmup_rounds
            if warm < 1.0:
                value *= max(warm, 1.0 / max(steps, 1))
        return value
