"""Privacy settings: what a run asks for (`[run.privacy]`) and what a site allows
(`[privacy]` in the site config). The site's policy always wins: a node refuses a round
that breaks it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_TARGET_EPSILON",
    "Accountant",
    "CentralPrivacySettings",
    "PrivacyPolicy",
    "SamplePrivacySettings",
]

Accountant = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[Accountant, ...] = ("rdp", "prv")
DEFAULT_TARGET_EPSILON = 8.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplePrivacySettings(_Strict):
    """`[run.privacy]`: sample-level DP-SGD at every training site (Opacus).

    Each site spends at most `target_epsilon` on this run (at its own delta), or trains
    with the fixed `noise_multiplier`; set one of the two. Without either the target is
    `DEFAULT_TARGET_EPSILON`."""

    enabled: bool = True
    target_epsilon: Annotated[float, Field(gt=0.0, le=1000.0)] | None = None
    noise_multiplier: Annotated[float, Field(gt=0.0, le=1000.0)] | None = None
    max_grad_norm: Annotated[float, Field(gt=0.0, le=1000.0)] = 1.0
    accountant: Accountant = "rdp"

    @model_validator(mode="before")
    @classmethod
    def _one_budget(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("target_epsilon") is not None and data.get("noise_multiplier") is not None:
            raise ValueError("set target_epsilon or noise_multiplier, not both")
        if data.get("target_epsilon") is None and data.get("noise_multiplier") is None:
            return {**data, "target_epsilon": DEFAULT_TARGET_EPSILON}
        return data


class CentralPrivacySettings(_Strict):
    """`[run.central_privacy]`: optional client-level DP at the server (Flower's DP
    primitives): each site's update is clipped to `clipping_norm` and Gaussian noise of
    `noise_multiplier * clipping_norm / sites` is added to the average. Protects whether
    a whole site took part, on top of (not instead of) the sites' own DP-SGD."""

    enabled: bool = False
    noise_multiplier: Annotated[float, Field(ge=0.0, le=1000.0)] = 1.0
    clipping_norm: Annotated[float, Field(gt=0.0)] = 10.0
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-3


class PrivacyPolicy(_Strict):
    """`[privacy]` in a site config: the hospital's own limits, enforced by its node.

    `max_epsilon` bounds the total epsilon ever spent on one data set, across rounds and
    runs, at the site's `delta`; the site's privacy ledger keeps the tally.
    `refuse_if_unlikely_to_learn` refuses, at approval and before training, a study the
    privacy planner judges unlikely to learn (`consortia.common.privacy.planner`)."""

    max_epsilon: Annotated[float, Field(gt=0.0, le=1000.0)] = 10.0
    delta: Annotated[float, Field(gt=0.0, lt=0.1)] = 1e-5
    min_noise_multiplier: Annotated[float, Field(ge=0.0, le=100.0)] = 0.5
    max_grad_norm: Annotated[float, Field(gt=0.0, le=1000.0)] = 10.0
    allow_non_private: bool = False
    refuse_if_unlikely_to_learn: StrictBool = False
