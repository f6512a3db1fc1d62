"""What the server asks a site to do in one message, as typed data on both ends.

The server builds an `Instruction` and sends `to_config()`; the site parses it back with
`Instruction.from_config()`, which checks every field. Wire keys live in `records`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from flwr.app import ConfigRecord
from pydantic import ValidationError

from consortia.common.config.privacy_settings import SamplePrivacySettings
from consortia.common.config.settings import Task
from consortia.common.networks.models import ModelSettings
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import (
    RecordFieldError,
    get_bool,
    get_float,
    get_int,
    get_str,
)

__all__ = ["Instruction", "get_task"]


def get_task(config: ConfigRecord) -> Task:
    """The task named in a config record (query and instruction messages)."""
    try:
        return Task(get_str(config, rk.CFG_TASK))
    except ValueError as err:
        raise RecordFieldError(f"'{rk.CFG_TASK}': {err}") from None


@dataclass(frozen=True)
class Instruction:
    """One round's instruction to one site (train or evaluate)."""

    round: int
    run_name: str
    task: Task
    model: ModelSettings
    layout_fingerprint: str
    batch_size: int
    surface_metrics: bool
    local_epochs: int = 0
    learning_rate: float = 0.0
    seed: int = 0
    evaluate_first: bool = False
    run_id: str = ""
    total_rounds: int = 1
    dataset: str = ""
    privacy: SamplePrivacySettings = field(default_factory=SamplePrivacySettings)
    # The code the server runs (the site refuses a run whose code it has not approved).
    app_hash: str = ""
    # Secure aggregation this round: the site returns its weighted delta, masked.
    secure: bool = False
    # Sites weigh their update by examples / weight_norm (secure aggregation only).
    weight_norm: float = 0.0
    # FedProx: weight of the proximal term mu/2 * ||w - w_global||^2 in local training.
    proximal_mu: float = 0.0

    def to_config(self) -> ConfigRecord:
        return ConfigRecord(
            {
                rk.CFG_ROUND: self.round,
                rk.CFG_RUN_NAME: self.run_name,
                rk.CFG_TASK: self.task.value,
                rk.CFG_MODEL_SETTINGS: json.dumps(asdict(self)["model"]),
                rk.CFG_LAYOUT_FINGERPRINT: self.layout_fingerprint,
                rk.CFG_BATCH_SIZE: self.batch_size,
                rk.CFG_SURFACE_METRICS: self.surface_metrics,
                rk.CFG_LOCAL_EPOCHS: self.local_epochs,
                rk.CFG_LEARNING_RATE: self.learning_rate,
                rk.CFG_SEED: self.seed,
                rk.CFG_EVALUATE_FIRST: self.evaluate_first,
                rk.CFG_RUN_ID: self.run_id,
                rk.CFG_TOTAL_ROUNDS: self.total_rounds,
                rk.CFG_DATASET: self.dataset,
                rk.CFG_PRIVACY_SETTINGS: self.privacy.model_dump_json(),
                rk.CFG_APP_HASH: self.app_hash,
                rk.CFG_SECURE: self.secure,
                rk.CFG_WEIGHT_NORM: self.weight_norm,
                rk.CFG_PROXIMAL_MU: self.proximal_mu,
            }
        )

    @classmethod
    def from_config(cls, config: ConfigRecord) -> Instruction:
        task = get_task(config)
        try:
            model_fields = json.loads(get_str(config, rk.CFG_MODEL_SETTINGS))
            model = ModelSettings(**model_fields)
        except (TypeError, ValueError) as err:
            raise RecordFieldError(f"'{rk.CFG_MODEL_SETTINGS}': {err}") from None
        try:
            privacy = SamplePrivacySettings.model_validate_json(
                get_str(config, rk.CFG_PRIVACY_SETTINGS)
            )
        except ValidationError as err:
            raise RecordFieldError(f"'{rk.CFG_PRIVACY_SETTINGS}': {err}") from None
        return cls(
            round=get_int(config, rk.CFG_ROUND),
            run_name=get_str(config, rk.CFG_RUN_NAME),
            task=task,
            model=model,
            layout_fingerprint=get_str(config, rk.CFG_LAYOUT_FINGERPRINT),
            batch_size=get_int(config, rk.CFG_BATCH_SIZE),
            surface_metrics=get_bool(config, rk.CFG_SURFACE_METRICS),
            local_epochs=get_int(config, rk.CFG_LOCAL_EPOCHS),
            learning_rate=get_float(config, rk.CFG_LEARNING_RATE),
            seed=get_int(config, rk.CFG_SEED),
            evaluate_first=get_bool(config, rk.CFG_EVALUATE_FIRST),
            run_id=get_str(config, rk.CFG_RUN_ID),
            total_rounds=get_int(config, rk.CFG_TOTAL_ROUNDS),
            dataset=get_str(config, rk.CFG_DATASET),
            privacy=privacy,
            app_hash=get_str(config, rk.CFG_APP_HASH),
            secure=get_bool(config, rk.CFG_SECURE),
            weight_norm=get_float(config, rk.CFG_WEIGHT_NORM),
            proximal_mu=_proximal_mu(config),
        )


def _proximal_mu(config: ConfigRecord) -> float:
    mu = get_float(config, rk.CFG_PROXIMAL_MU)
    if not math.isfinite(mu) or mu < 0:
        raise RecordFieldError(f"'{rk.CFG_PROXIMAL_MU}' must be a finite number >= 0, got {mu}")
    return mu
