"""Privacy settings: what a run asks for (`[run.privacy]`) and what a site allows
(`[privacy]` in the site config). The site's policy always wins: a node refuses a round
that breaks it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_TARGET_EPSILON",
    "PARAMETER_GROUPS",
    "Accountant",
    "CentralPrivacySettings",
    "DPRecipeSettings",
    "ParameterGroup",
    "PrivacyPolicy",
    "SamplePrivacySettings",
]

Accountant = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[Accountant, ...] = ("rdp", "prv")
DEFAULT_TARGET_EPSILON = 8.0
#: Named parameter subsets a DP recipe may fine-tune alone (`DPRecipeSettings.trainable`):
#: the normalisation layers' scales and shifts, the U-Net's up-sampling path, and the
#: last layer (the U-Net's output convolution, the ResNet's classifier).
ParameterGroup = Literal["norm", "decoder", "head"]
PARAMETER_GROUPS: tuple[ParameterGroup, ...] = ("norm", "decoder", "head")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DPRecipeSettings(_Strict):
    """`[run.privacy.recipe]`: how DP-SGD trains, none of which changes its accounting.

    - `batch_size`: the logical batch of one DP-SGD step, i.e. the *expected* Poisson
      batch (sample rate q = 1 / ceil(N / batch_size)); default: `[run.training]
      batch_size`. It is computed in micro-batches of at most `physical_batch_size`
      rows (default: `[run.training] batch_size`), whose clipped sums add up before the
      one noise draw of the step (virtual batches: memory bounded, accounting exact).
    - `augmentation_multiplicity` K: every sampled example is augmented K times and its
      gradient is the mean over its K copies, clipped once (De et al. 2022): same
      sensitivity, same privacy cost. A micro-batch holds `physical_batch_size` rows,
      i.e. `physical_batch_size // K` examples.
    - `ema_decay`: the site sends an exponential moving average of its weights over the
      round's steps (post-processing: no privacy cost); 0 turns it off.
    - `trainable`: fine-tune only these parameter groups (`PARAMETER_GROUPS`); empty:
      the whole network. Frozen weights get no gradient and no noise.
    - `optimizer`, `learning_rate`: DP rounds' optimiser and base rate, in place of
      `[run.training]`'s (noisy gradients usually want another rate)."""

    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    physical_batch_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    augmentation_multiplicity: Annotated[int, Field(ge=1, le=64)] = 1
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    trainable: tuple[ParameterGroup, ...] = ()
    optimizer: Literal["adam", "adamw", "sgd"] | None = None
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DPRecipeSettings:
        if len(set(self.trainable)) != len(self.trainable):
            raise ValueError(f"trainable names a group twice: {list(self.trainable)}")
        physical = self.physical_batch_size
        if physical is not None and physical < self.augmentation_multiplicity:
            raise ValueError(
                f"physical_batch_size {physical} is smaller than augmentation_multiplicity "
                f"{self.augmentation_multiplicity}: a micro-batch must hold all K copies of "
                "one example"
            )
        return self

    def logical_batch_size(self, training_batch_size: int) -> int:
        """The expected Poisson batch of one DP-SGD step."""
        return self.batch_size or training_batch_size

    def examples_per_micro_batch(self, training_batch_size: int) -> int:
        """How many sampled examples (each with its K copies) one micro-batch holds."""
        rows = self.physical_batch_size or training_batch_size
        return max(1, rows // self.augmentation_multiplicity)


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
    recipe: DPRecipeSettings = Field(default_factory=DPRecipeSettings)

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
