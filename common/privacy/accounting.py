"""Privacy math for DP-SGD with Poisson sampling: pure functions over Opacus' accountants.

A privacy history is a list of `(noise_multiplier, sample_rate, steps)`: every step of
DP-SGD with Poisson sampling at rate q and Gaussian noise sigma * C is one subsampled
Gaussian mechanism, and the accountant composes them all. The history of a data set
spans every round of every run that ever trained on it.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from opacus.accountants import IAccountant, RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from consortia.common.config.privacy_settings import Accountant

__all__ = [
    "HistoryEntry",
    "PoissonPlan",
    "check_history_entry",
    "epsilon_of",
    "make_accountant",
    "noise_for_target",
    "poisson_plan",
]

HistoryEntry = tuple[float, float, int]


def make_accountant(kind: Accountant, history: Sequence[HistoryEntry] = ()) -> IAccountant:
    """An Opacus accountant of `kind` ("rdp" or "prv") restored to `history`."""
    accountant = create_accountant(kind)
    if history:
        state = {"history": [check_history_entry(entry) for entry in history]}
        accountant.load_state_dict(state | {"mechanism": accountant.mechanism()})
    return accountant


def check_history_entry(entry: HistoryEntry) -> HistoryEntry:
    """`(sigma, q, steps)` as floats and an int; ValueError naming what is out of range."""
    sigma, rate, steps = entry
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"noise multiplier must be positive, got {sigma}")
    if not 0 < rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {rate}")
    if steps < 0 or int(steps) != steps:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    return float(sigma), float(rate), int(steps)


@functools.lru_cache(maxsize=256)
def _rdp_per_step(sigma: float, rate: float) -> np.ndarray:
    orders = RDPAccountant.DEFAULT_ALPHAS
    return np.asarray(
        rdp_analysis.compute_rdp(q=rate, noise_multiplier=sigma, steps=1, orders=orders)
    )


def epsilon_of(history: Sequence[HistoryEntry], delta: float, kind: Accountant) -> float:
    """Epsilon at `delta` of everything in `history` (0 for an empty history).

    RDP is computed exactly as Opacus' `RDPAccountant` does (same orders, same
    conversion), with the per-step RDP of each (sigma, q) cached: a ledger's history
    repeats the same few pairs, and RDP composes linearly in the number of steps."""
    steps = [check_history_entry(entry) for entry in history if entry[2] > 0]
    if not steps:
        return 0.0
    if kind != "rdp":
        return float(make_accountant(kind, steps).get_epsilon(delta=delta))
    total = sum(_rdp_per_step(sigma, rate) * count for sigma, rate, count in steps)
    with warnings.catch_warnings():
        # "optimal order is the largest alpha": the bound stays valid, only less tight.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        epsilon, _ = rdp_analysis.get_privacy_spent(
            orders=RDPAccountant.DEFAULT_ALPHAS, rdp=total, delta=delta
        )
    return float(epsilon)


def noise_for_target(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, kind: Accountant
) -> float:
    """The smallest noise multiplier (to Opacus' search tolerance) with which `steps`
    Poisson-sampled steps at `sample_rate` spend at most `target_epsilon` at `delta`."""
    if steps <= 0:
        raise ValueError("steps must be positive")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=kind,
            )
        )


@dataclass(frozen=True)
class PoissonPlan:
    """How a site's local training samples its data: every example joins each batch
    independently with probability `sample_rate`; an epoch is `steps_per_epoch` steps."""

    sample_rate: float
    steps_per_epoch: int
    expected_batch_size: int

    def steps(self, epochs: int) -> int:
        return self.steps_per_epoch * epochs


def poisson_plan(num_examples: int, batch_size: int) -> PoissonPlan:
    """The plan Opacus' DP data loader follows for `num_examples` and `batch_size`:
    q = 1 / ceil(N / B), int(1 / q) steps per epoch, expected batch int(N * q)."""
    if num_examples <= 0:
        raise ValueError("no training examples")
    if batch_size <= 0:
        raise ValueError("batch size must be positive")
    sample_rate = 1.0 / math.ceil(num_examples / batch_size)
    return PoissonPlan(sample_rate, int(1 / sample_rate), int(num_examples * sample_rate))
