"""FedAdam / FedYogi / FedAvgM: a server optimizer that applies the round's mean as a
pseudo-gradient.

The math is Flower's `FedOpt` family (`flwr.serverapp.strategy.FedAdam` / `FedYogi`, after
Reddi et al., "Adaptive Federated Optimization", 2020) on flat weight vectors:

    delta = mean - global
    m     = beta_1 * m + (1 - beta_1) * delta
    v     = beta_2 * v + (1 - beta_2) * delta^2                          (Adam)
    v     = v - (1 - beta_2) * delta^2 * sign(v - delta^2)               (Yogi)
    new   = global + eta_t * m / (sqrt(v) + tau)

FedAvgM (Hsu et al., "Measuring the Effects of Non-Identical Data Distribution", 2019;
Flower's `FedAvgM`) keeps a velocity instead, with `beta_1` as the server momentum:

    m     = beta_1 * m + delta
    new   = global + eta * m

Bias correction follows Flower exactly: FedAdam scales the learning rate by
`sqrt(1 - beta_2^(t + 1)) / (1 - beta_1^(t + 1))`, where Flower's t is the server round
(1 on the first); here t counts the steps applied (the same when every round updates the
model; a round left unchanged does not advance it). FedYogi applies no bias correction.

The moments are kept in float32 (like Flower and PyTorch's Adam) and the step is computed
in float64. `state_dict()` holds everything a resumed run needs to continue bit for bit.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np

from consortia.common.errors import ConsortiaError

__all__ = ["OPTIMIZER_KINDS", "OptimizerKind", "ServerOptimizer", "StrategyStateError"]

logger = logging.getLogger("consortia.server")

OptimizerKind = Literal["fedadam", "fedyogi", "fedavgm"]
OPTIMIZER_KINDS: tuple[str, ...] = ("fedadam", "fedyogi", "fedavgm")

# Keys of `ServerOptimizer.state_dict()`.
_KIND = "kind"
_STEP = "step"
_LEARNING_RATE = "server_learning_rate"
_BETA_1 = "beta_1"
_BETA_2 = "beta_2"
_TAU = "tau"
_FIRST_MOMENT = "m"
_SECOND_MOMENT = "v"
_STATE_KEYS = frozenset(
    {_KIND, _STEP, _LEARNING_RATE, _BETA_1, _BETA_2, _TAU, _FIRST_MOMENT, _SECOND_MOMENT}
)
_MOMENT_DTYPE = np.dtype(np.float32)


class StrategyStateError(ConsortiaError):
    """A saved strategy state cannot be loaded; the message names the field."""


def _moment(state: dict[str, Any], key: str) -> np.ndarray:
    value = state[key]
    if not isinstance(value, np.ndarray):
        raise StrategyStateError(f"strategy state: {key} is {type(value).__name__}, not an array")
    if value.ndim != 1:
        raise StrategyStateError(f"strategy state: {key} has shape {value.shape}, not flat")
    if value.dtype != _MOMENT_DTYPE:
        raise StrategyStateError(f"strategy state: {key} has dtype {value.dtype}, not float32")
    if not np.all(np.isfinite(value)):
        raise StrategyStateError(f"strategy state: {key} holds NaN or infinite values")
    return np.array(value, dtype=_MOMENT_DTYPE, copy=True)


class ServerOptimizer:
    """Adam or Yogi moments (or FedAvgM's velocity) over the flat global weights, kept
    across rounds."""

    def __init__(
        self,
        kind: OptimizerKind,
        learning_rate: float,
        beta_1: float,
        beta_2: float,
        tau: float,
    ) -> None:
        if kind not in OPTIMIZER_KINDS:
            raise ValueError(f"unknown server optimizer {kind!r} (expected {OPTIMIZER_KINDS})")
        if not learning_rate > 0 or not tau > 0:
            raise ValueError("server_learning_rate and tau must be > 0")
        if not (0.0 <= beta_1 < 1.0 and 0.0 <= beta_2 < 1.0):
            raise ValueError("beta_1 and beta_2 must be in [0, 1)")
        self.kind: OptimizerKind = kind
        self.learning_rate = float(learning_rate)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.tau = float(tau)
        self.steps = 0
        # Empty until the first step sets the model size.
        self._m = np.zeros(0, dtype=_MOMENT_DTYPE)
        self._v = np.zeros(0, dtype=_MOMENT_DTYPE)

    def effective_learning_rate(self, step: int) -> float:
        """The learning rate of step `step` (1 on the first): bias-corrected for FedAdam,
        with Flower's exponent `step + 1`; constant for FedYogi and FedAvgM."""
        if self.kind != "fedadam":
            return self.learning_rate
        power = step + 1.0
        return self.learning_rate * math.sqrt(1.0 - self.beta_2**power) / (1.0 - self.beta_1**power)

    def step(self, global_weights: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """The next global weights from this round's (weighted) mean of the sites' models."""
        if global_weights.ndim != 1 or mean.shape != global_weights.shape:
            raise ValueError(
                f"mean has shape {mean.shape}, the global weights {global_weights.shape}"
            )
        size = global_weights.shape[0]
        if self.steps == 0:
            self._m = np.zeros(size, dtype=_MOMENT_DTYPE)
            self._v = np.zeros(size, dtype=_MOMENT_DTYPE)
        elif self._m.shape[0] != size:
            raise StrategyStateError(
                f"strategy state: m has {self._m.shape[0]} values, the model {size}"
            )
        # float64 work arrays, updated in place to keep the peak memory at a few vectors.
        current = global_weights.astype(np.float64)
        delta = mean.astype(np.float64)
        delta -= current
        if self.kind == "fedavgm":
            return self._momentum_step(current, delta, global_weights.dtype)
        m = self._m.astype(np.float64)
        m *= self.beta_1
        m += (1.0 - self.beta_1) * delta
        delta_sq = np.square(delta, out=delta)  # delta itself is no longer needed
        v = self._v.astype(np.float64)
        if self.kind == "fedadam":
            v *= self.beta_2
            v += (1.0 - self.beta_2) * delta_sq
        else:
            sign = np.sign(v - delta_sq)
            delta_sq *= 1.0 - self.beta_2
            delta_sq *= sign
            del sign
            v -= delta_sq
        del delta_sq, delta
        self.steps += 1
        rate = self.effective_learning_rate(self.steps)
        change = np.sqrt(v)
        change += self.tau
        np.divide(m, change, out=change)
        change *= rate
        current += change
        self._m = m.astype(_MOMENT_DTYPE)
        self._v = v.astype(_MOMENT_DTYPE)
        logger.debug("%s step %d (learning rate %.3g)", self.kind, self.steps, rate)
        return current.astype(global_weights.dtype)

    def _momentum_step(
        self, current: np.ndarray, delta: np.ndarray, dtype: np.dtype[Any]
    ) -> np.ndarray:
        """FedAvgM: the velocity `m = beta_1 * m + delta`, then `global + eta * m`
        (the second moment stays zero)."""
        m = self._m.astype(np.float64)
        m *= self.beta_1
        m += delta
        self.steps += 1
        current += self.learning_rate * m
        self._m = m.astype(_MOMENT_DTYPE)
        logger.debug("fedavgm step %d (momentum %.3g)", self.steps, self.beta_1)
        return current.astype(dtype)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the step count, the settings it ran with (checked on
        load) and the moments (float32 arrays, empty before the first step)."""
        return {
            _KIND: self.kind,
            _STEP: self.steps,
            _LEARNING_RATE: self.learning_rate,
            _BETA_1: self.beta_1,
            _BETA_2: self.beta_2,
            _TAU: self.tau,
            _FIRST_MOMENT: self._m.copy(),
            _SECOND_MOMENT: self._v.copy(),
        }

    def load_state_dict(self, state: dict[str, Any], vector_size: int | None = None) -> None:
        """Resume from `state_dict()`; refuses a state of another optimizer or other
        settings, moments of the wrong shape (`vector_size`: the model's, when known),
        dtype or sign, or non-finite values. Nothing changes unless all of it is valid."""
        missing = _STATE_KEYS - state.keys()
        if missing:
            raise StrategyStateError(f"strategy state: missing {', '.join(sorted(missing))}")
        unknown = state.keys() - _STATE_KEYS
        if unknown:
            raise StrategyStateError(f"strategy state: unknown {', '.join(sorted(unknown))}")
        if state[_KIND] != self.kind:
            raise StrategyStateError(
                f"strategy state: {_KIND} is {state[_KIND]!r}, this run uses {self.kind!r}"
            )
        steps = state[_STEP]
        if isinstance(steps, np.integer):
            steps = int(steps)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise StrategyStateError(f"strategy state: {_STEP} must be an integer >= 0")
        for key, own in (
            (_LEARNING_RATE, self.learning_rate),
            (_BETA_1, self.beta_1),
            (_BETA_2, self.beta_2),
            (_TAU, self.tau),
        ):
            saved = state[key]
            if not isinstance(saved, int | float | np.floating) or float(saved) != own:
                raise StrategyStateError(
                    f"strategy state: {key} was {saved!r}, this run's setting is {own!r}"
                )
        m = _moment(state, _FIRST_MOMENT)
        v = _moment(state, _SECOND_MOMENT)
        if v.shape != m.shape:
            raise StrategyStateError(
                f"strategy state: {_SECOND_MOMENT} has shape {v.shape}, {_FIRST_MOMENT} {m.shape}"
            )
        if (steps == 0) != (m.shape[0] == 0):
            raise StrategyStateError(
                f"strategy state: {_STEP}={steps} does not fit moments of {m.shape[0]} values"
            )
        if steps and vector_size is not None and m.shape[0] != vector_size:
            raise StrategyStateError(
                f"strategy state: {_FIRST_MOMENT} has {m.shape[0]} values, the model {vector_size}"
            )
        if np.any(v < 0):
            raise StrategyStateError(f"strategy state: {_SECOND_MOMENT} has negative values")
        self.steps = steps
        self._m = m
        self._v = v
