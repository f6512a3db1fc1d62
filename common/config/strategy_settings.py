"""How the server combines the sites' updates: `[strategy]` and `[validation]`.

Strategies (docs/strategies.md):

- ``fedavg``: the example-weighted mean of the sites' models.
- ``fedprox``: FedAvg at the server; the sites add the proximal term
  ``proximal_mu / 2 * ||w - w_global||^2`` to their local loss.
- ``fedadam`` / ``fedyogi``: the weighted mean gives a pseudo-gradient that a server
  optimizer (Adam / Yogi moments, kept across rounds and checkpointed) applies.
- ``fedavgm``: FedAvg with server momentum (Hsu et al. 2019): the round's move towards
  the mean is added to a velocity ``server_momentum * v + (mean - global)``, and the
  server steps ``server_learning_rate * v`` (1.0 unless set).
- ``median``, ``trimmed_mean``: coordinate-wise, robust to a minority of bad updates.
- ``krum`` / ``multi_krum``: keep the update(s) closest to their neighbours, robust to
  ``byzantine_sites`` bad ones.

Only the first four are linear in the updates, so only they combine with secure
aggregation (the server then sees just the sum).

Validation runs before aggregation on every update the server can see (plain rounds):
non-finite values, wrong keys or shapes, an example count above the site's declared data
size, an update norm above ``max_update_norm``, or far above the other sites' norms.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "LINEAR_STRATEGIES",
    "STRATEGY_NAMES",
    "StrategyName",
    "StrategySettings",
    "ValidationSettings",
]

StrategyName = Literal[
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedavgm",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)
LINEAR_STRATEGIES: frozenset[str] = frozenset(
    {"fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm"}
)


class StrategySettings(BaseModel):
    """`[strategy]` of a run config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrategyName = "fedavg"
    # FedProx: weight of the proximal term at the sites (must be > 0 for fedprox).
    proximal_mu: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0
    # FedAdam / FedYogi / FedAvgM: the server's step size (unset: 0.01 for FedAdam and
    # FedYogi, 1.0 for FedAvgM; `server_rate`), moment decay rates, adaptivity.
    server_learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    # FedAvgM: the server velocity's decay.
    server_momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta_1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta_2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.99
    tau: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    # trimmed_mean: fraction of the values cut at each end of every coordinate.
    trim_fraction: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.2
    # krum / multi_krum: how many bad updates to tolerate (needs >= 2f + 3 updates).
    byzantine_sites: Annotated[int, Field(ge=0, le=1000)] = 1
    # multi_krum: updates averaged; 0 means all but byzantine_sites.
    multi_krum_keep: Annotated[int, Field(ge=0, le=10_000)] = 0

    @property
    def server_rate(self) -> float:
        """The server optimizer's step size: as set, else the strategy's default."""
        if self.server_learning_rate is not None:
            return self.server_learning_rate
        return 1.0 if self.name == "fedavgm" else 0.01

    @model_validator(mode="after")
    def _parameters_fit(self) -> StrategySettings:
        if self.name == "fedprox" and self.proximal_mu <= 0:
            raise ValueError('strategy "fedprox" needs proximal_mu > 0 (e.g. 0.01)')
        if self.name != "fedprox" and self.proximal_mu != 0:
            raise ValueError(
                f'proximal_mu is a FedProx setting; strategy "{self.name}" does not use it'
            )
        return self

    @property
    def linear(self) -> bool:
        """Whether the strategy only needs the (weighted) sum of the updates."""
        return self.name in LINEAR_STRATEGIES


class ValidationSettings(BaseModel):
    """`[validation]` of a run config: checks on each update before aggregation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Reject an update whose L2 distance to the global model exceeds this; 0: no bound.
    max_update_norm: Annotated[float, Field(ge=0.0)] = 0.0
    # Reject an update whose norm exceeds this many times the median of the other
    # sites' norms in the round (needs at least 3 updates); 0: off.
    outlier_factor: Annotated[float, Field(ge=0.0)] = 10.0
