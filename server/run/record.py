"""The typed run record: one pydantic model for a run folder's `results.json`.

Every reader and writer of `results.json` goes through `RunRecord`: the run folder
writes it (`consortia.server.run.folder`), the report, the privacy audit, TensorBoard
and the live progress read it. The JSON on disk is the one docs/results-schema.md
describes (`"schema": "consortia.results/1"`); files written by earlier versions load.

Unknown keys: every object the server defines forbids them (`extra="forbid"`), so a typo
in a writer fails at once and a reader never meets a key it does not know. Four objects
are open by design, their extra keys kept as written: `settings` and
`privacy.sample_level` (the run config, whose schema is
`consortia.common.config.settings.RunSettings`), `rounds[].strategy` (each strategy adds
its own details) and `privacy.central` (settings plus what Flower's accountant reports).
Metrics are open maps (metric name -> number, null for NaN). Keys that only some runs
have are optional here and absent from the file when unset (`to_json`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consortia.common.errors import ConsortiaError
from consortia.common.privacy.ledger import LedgerHead
from consortia.common.privacy.spend import PrivacySpend, spend_error

__all__ = [
    "HOLDOUT",
    "RESULTS_SCHEMA",
    "TRAINING_SITES",
    "AppRecord",
    "BaselineResult",
    "Baselines",
    "CentralPrivacyRecord",
    "CentralRelease",
    "Evaluation",
    "Intervals",
    "LedgerHeadRecord",
    "Metrics",
    "PrivacySection",
    "ResumedRecord",
    "RoundEntry",
    "RoundSecureAggregation",
    "RoundSpent",
    "RunRecord",
    "SampleLevelPrivacy",
    "SecureAggregationDecision",
    "SecurityRecord",
    "SettingsRecord",
    "SiteEntry",
    "SitePrivacyRecord",
    "StoppedRecord",
    "StrategyReport",
    "TrainInfo",
]

RESULTS_SCHEMA: Final = "consortia.results/1"
# The pooled groups of an evaluation (`rounds[].evaluation.holdout` / `.training_sites`).
HOLDOUT: Final = "holdout"
TRAINING_SITES: Final = "training_sites"

#: Metric name -> value (null where undefined: NaN is not JSON).
Metrics = dict[str, float | None]
#: Metric name -> 95% interval [low, high], or null where undefined.
IntervalMap = dict[str, list[float] | None]
_Count = Annotated[int, Field(ge=0)]


class _Record(BaseModel):
    """A closed, frozen part of the record: unknown keys and coerced types are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class _OpenRecord(BaseModel):
    """A part whose extra keys are kept as written (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)


class SiteEntry(_Record):
    """`sites[]`: a site that joined the run."""

    name: str
    role: str
    node_id: int | None = None
    num_train: _Count | None = None
    num_eval: _Count | None = None
    data_fingerprint: str | None = None


class TrainInfo(_Record):
    """`rounds[].train[site]`: what a participant's training reported."""

    examples: _Count
    compute_s: float | None = None
    loss: float | None = None
    update_norm: float | None = None


class RoundSpent(PrivacySpend):
    """`rounds[].privacy[site]`: the round's spend with the site's example count.
    Records written before clipping norms and counts were kept lack them."""

    max_grad_norm: Annotated[float, Field(gt=0.0)] | None = None  # type: ignore[assignment]
    num_examples: _Count | None = None


class LedgerHeadRecord(_Record):
    """A site's privacy-ledger head as its train reply carried it."""

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    entries: _Count

    def head(self) -> LedgerHead:
        return LedgerHead(self.sha256, self.entries)


class Intervals(_Record):
    """`evaluation.intervals`: bootstrap confidence intervals of the final model."""

    level: float
    replicates: int
    method: str
    sites: dict[str, IntervalMap] = Field(default_factory=dict)
    holdout: IntervalMap | None = None
    training_sites: IntervalMap | None = None

    def of_group(self, group: str) -> IntervalMap | None:
        """The intervals of `HOLDOUT` or `TRAINING_SITES`."""
        return self.holdout if group == HOLDOUT else self.training_sites


class Evaluation(_Record):
    """`rounds[].evaluation`: metrics of the round's model per site and pooled."""

    sites: dict[str, Metrics] = Field(default_factory=dict)
    holdout: Metrics | None = None
    training_sites: Metrics | None = None
    intervals: Intervals | None = None

    def pooled(self, group: str) -> Metrics | None:
        """The pooled metrics of `HOLDOUT` or `TRAINING_SITES`."""
        return self.holdout if group == HOLDOUT else self.training_sites


class RoundSecureAggregation(_Record):
    """`rounds[].secure_aggregation`: a secure round's outcome."""

    session: int
    sites: int
    threshold: int | None = None
    dropped: int
    status: Literal["ok", "failed"]
    reason: str | None = None


class CentralRelease(_Record):
    """`rounds[].central_privacy`: whether central DP released a model this round."""

    released: bool
    reason: str | None = None


class StrategyReport(_OpenRecord):
    """`rounds[].strategy`: the aggregation strategy's account of the round (each
    strategy adds its own keys)."""

    name: str
    unchanged: str | None = None
    kept: list[str] | None = None


class RoundEntry(_Record):
    """`rounds[]`: the global model after round `round` (0: the initial model)."""

    round: _Count
    participants: list[str] | None = None
    train: dict[str, TrainInfo] | None = None
    left_out: dict[str, str] | None = None
    not_connected: list[str] | None = None
    total_examples: _Count | None = None
    checkpoint: str | None = None
    model_sha256: str | None = None
    upload_bytes: _Count | None = None
    secure_aggregation: RoundSecureAggregation | None = None
    duration_s: float | None = None
    evaluation: Evaluation | None = None
    privacy: dict[str, RoundSpent] | None = None
    ledger_heads: dict[str, LedgerHeadRecord] | None = None
    central_privacy: CentralRelease | None = None
    strategy: StrategyReport | None = None


class SampleLevelPrivacy(_OpenRecord):
    """`privacy.sample_level`: the run's `[run.privacy]` settings (open, as settings)."""

    enabled: bool = True
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    accountant: str | None = None


class CentralPrivacyRecord(_OpenRecord):
    """`privacy.central`: `[run.central_privacy]` plus what Flower's accountant reports."""

    enabled: bool = False
    noise_multiplier: float | None = None
    clipping_norm: float | None = None
    delta: float | None = None
    epsilon: float | None = None
    accountant: str | None = None
    rounds_released: int | None = None


class SitePrivacyRecord(_Record):
    """`privacy.sites[name]`: a training site's policy and spending."""

    dataset_fingerprint: Annotated[str, Field(min_length=1)] | None = None
    max_epsilon: Annotated[float, Field(ge=0.0)]
    delta: Annotated[float, Field(gt=0.0, lt=1.0)]
    epsilon_before_run: Annotated[float, Field(ge=0.0)] | None = None
    epsilon: float | None = None
    excluded: str | None = None


class PrivacySection(_Record):
    """`privacy`: the run's privacy settings and every training site's spending."""

    sample_level: SampleLevelPrivacy
    central: CentralPrivacyRecord | None = None
    sites: dict[str, SitePrivacyRecord]


class SettingsRecord(_OpenRecord):
    """`settings`: the validated run config; the parts readers use are typed."""

    rounds: int | None = None
    model: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    strategy: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    secure_aggregation: dict[str, Any] | None = None
    privacy: dict[str, Any] | None = None
    central_privacy: dict[str, Any] | None = None


class AppRecord(_Record):
    """`app`: the code that ran."""

    app_hash: str
    version: str | None = None
    packages: list[str] | None = None
    files: int | None = None


class SecurityRecord(_Record):
    """`security`: how the server protected the run."""

    tls: bool | None = None
    site_authentication: bool | None = None
    signed_updates: bool | None = None


class SecureAggregationDecision(_Record):
    """`secure_aggregation`: decided once per run."""

    enabled: bool | None = None
    reason: str | None = None


class StoppedRecord(_Record):
    """`stopped`: the round where the quorum was lost and why."""

    round: int
    reason: str


class ResumedRecord(_Record):
    """`resumed[]`: one resumption of the run."""

    at: str
    flower_run_id: int | None = None
    after_round: int


class BaselineResult(_Record):
    """`baselines.pooled` / `baselines.local[site]`: one baseline of the study (the same
    settings, rounds and epochs, trained on other data), its final model on the held-out
    sites."""

    run_name: str
    training_sites: list[str]
    status: str | None = None
    holdout: Metrics | None = None
    holdout_intervals: IntervalMap | None = None
    wall_s: float | None = None


class Baselines(_Record):
    """`baselines`: the study trained pooled and at each training site alone (`consortia
    run --simulation --baselines`), scored on the same held-out sites as the federation."""

    pooled: BaselineResult | None = None
    local: dict[str, BaselineResult] = Field(default_factory=dict)


class RunRecord(_Record):
    """The whole of `results.json` (docs/results-schema.md)."""

    schema_: Literal["consortia.results/1"] = Field(alias="schema")
    run_name: str | None = None
    flower_run_id: int | None = None
    task: str | None = None
    settings: SettingsRecord | None = None
    status: str | None = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    sites: list[SiteEntry] = Field(default_factory=list)
    rounds: list[RoundEntry] = Field(default_factory=list)
    ended_early: str | None = None
    stopped: StoppedRecord | None = None
    resumed: list[ResumedRecord] = Field(default_factory=list)
    privacy: PrivacySection | None = None
    config_hash: str | None = None
    app: AppRecord | None = None
    security: SecurityRecord | None = None
    secure_aggregation: SecureAggregationDecision | None = None
    node_audit_heads: dict[str, str] = Field(default_factory=dict)
    ledger_heads: dict[str, LedgerHeadRecord] = Field(default_factory=dict)
    baselines: Baselines | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any], where: str) -> RunRecord:
        """The record in `data` (JSON text or the parsed object); `ConsortiaError` names
        `where` (the file) and each field (`rounds.3.privacy.site-a.epsilon`) that does
        not fit the schema."""
        try:
            if isinstance(data, str):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError as err:
            if any(error["loc"][:1] == ("schema",) for error in err.errors()):
                raise ConsortiaError(f"{where}: not a {RESULTS_SCHEMA} file") from None
            raise ConsortiaError(f"{where}: {spend_error(err)}") from None

    def to_json(self) -> dict[str, Any]:
        """The JSON object `results.json` holds: keys never set stay absent."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def roles(self) -> dict[str, str]:
        """Site name -> role of every site that joined."""
        return {site.name: site.role for site in self.sites}

    def round_entry(self, number: int) -> RoundEntry | None:
        """The `rounds[]` entry of model version `number`, if recorded."""
        return next((entry for entry in self.rounds if entry.round == number), None)

    def trained_rounds(self) -> list[RoundEntry]:
        """The entries of rounds 1.. (the models training produced)."""
        return [entry for entry in self.rounds if entry.round >= 1]

    @property
    def planned_rounds(self) -> int | None:
        return None if self.settings is None else self.settings.rounds
