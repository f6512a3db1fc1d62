"""Typed settings for a coordinator's run config and a hospital's site config.

Both are TOML files, parsed once at the edge into frozen pydantic models. Unknown keys,
wrong types and missing files are errors that name the file and the field.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from consortia.common.config.device_names import DEVICE_PATTERN
from consortia.common.config.model_settings import ModelInit, ModelSettings
from consortia.common.config.plan_settings import PlanSettings
from consortia.common.config.privacy_settings import (
    CentralPrivacySettings,
    PrivacyPolicy,
    SamplePrivacySettings,
)
from consortia.common.config.security_settings import SecureAggregationSettings
from consortia.common.config.strategy_settings import StrategySettings, ValidationSettings
from consortia.common.errors import ConfigError

__all__ = [
    "DataSettings",
    "ModelConfig",
    "NodeSettings",
    "ReportSettings",
    "Role",
    "RosterEntry",
    "RunSettings",
    "SaliencySettings",
    "SiteInfo",
    "SiteSettings",
    "Task",
    "TrainingSettings",
    "format_validation_error",
    "load_run_settings",
    "load_site_settings",
    "run_settings_from_json",
]

_M = TypeVar("_M", bound=BaseModel)
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# The run config's folder, beside the settings in the Flower run config (not approved,
# not hashed): where the server finds a relative `model.init.path` (`RunSettings.to_json`).
_CONFIG_DIR_KEY = "_config_dir"


class Task(StrEnum):
    """What the federation learns."""

    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"


class Role(StrEnum):
    """What a site does in a run: train on its data, or only evaluate (held-out)."""

    TRAIN = "train"
    HOLDOUT = "holdout"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class RosterEntry(_Strict):
    """One site of a study's roster (`[[run.sites]]`): its name, the fingerprint of its
    registered key (`SHA256:...`, as `consortia certs site` and `site list` print it) and
    its role. Sites check their own entry and their neighbours against it.

    `max_examples` (optional, approved with the study): the most training examples the
    site may declare; under secure aggregation the server leaves a site that declares more
    out of the round (without it, the count the site declared when it joined bounds it)."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    fingerprint: Annotated[str, Field(pattern=r"^SHA256:[A-Za-z0-9+/]{43}$")]
    role: Role = Role.TRAIN
    max_examples: Annotated[int, Field(ge=1)] | None = None


class ModelConfig(_Strict):
    """The `[model]` table of a run config; turned into `ModelSettings` for the factory."""

    architecture: Literal["unet", "resnet18", "resnet34"] = "unet"
    spatial_dims: Literal[2, 3] = 2
    in_channels: Annotated[int, Field(ge=1, le=16)] = 1
    out_channels: Annotated[int, Field(ge=2, le=256)] = 2
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: Annotated[int, Field(ge=0, le=4)] = 1
    norm_groups: Annotated[int, Field(ge=1)] = 8
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    conv1_kernel: Annotated[int, Field(ge=1, le=11)] = 7
    conv1_stride: Annotated[int, Field(ge=1, le=4)] = 2
    no_max_pool: bool = False
    # The approved starting weights (`[run.model.init]`); none: the run-seeded model.
    init: ModelInit | None = None

    def to_model_settings(self) -> ModelSettings:
        """The plain arguments of `consortia.common.networks.models.build_model`."""
        return ModelSettings(**self.model_dump(exclude={"init"}))


class TrainingSettings(_Strict):
    """The `[training]` table: what each site does with a train message.

    `learning_rate` is the base rate of `schedule`, which runs over the whole run (every
    round's local steps continue it; `consortia.common.config.lr_schedule`). Each site derives a
    step's rate from these approved settings and the round number."""

    local_epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 16
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    schedule: Literal["constant", "poly", "cosine"] = "constant"
    # Rounds over which the rate rises linearly to the schedule's value (0: none).
    warmup_rounds: Annotated[int, Field(ge=0, le=10_000)] = 0
    # SGD only: heavy-ball momentum (Nesterov's by default, as nnU-Net).
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    # Random intensity augmentation of every training example (gamma, scale, shift,
    # noise, blur: consortia.client.training.augment); mirroring along `flip_axes` (spatial axes).
    augment: bool = False
    flip_axes: tuple[Annotated[int, Field(ge=0, le=2)], ...] = ()
    # Classification: "balanced" weighs each class n / (k * n_c) by the site's own label
    # counts, which stay at the site (consortia.client.training.classification_recipe).
    class_weights: Literal["none", "balanced"] = "none"
    # Segmentation: the Dice term per case ("per_case", what DP-SGD needs) or over the whole
    # batch ("batch": a case without foreground still pulls false positives down; it
    # couples the examples of a batch, so it needs a run without DP).
    dice: Literal["per_case", "batch"] = "per_case"

    @model_validator(mode="after")
    def _sgd_options(self) -> TrainingSettings:
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("nesterov = true needs momentum > 0 (set nesterov = false)")
        return self


class ReportSettings(_Strict):
    """The `[report]` table of a run config: what the server records beside results.json."""

    # Write every metric of every round as TensorBoard event files in RUN_DIR/tensorboard
    # while the run goes on (needs the `tensorboard` extra on the server).
    tensorboard: bool = False
    # Log the run to this MLflow tracking URI when it ends (`file:///...`, `http://...`;
    # needs the `mlflow` extra on the server): params, per-round and per-site metrics, the
    # report as an artifact.
    mlflow: Annotated[str, Field(min_length=1, max_length=2000)] | None = None


class RunSettings(_Strict):
    """A coordinator's run config: the whole study in one file."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN)] = "study"
    task: Task = Task.SEGMENTATION
    rounds: Annotated[int, Field(ge=1, le=10_000)] = 5
    min_sites: Annotated[int, Field(ge=1, le=10_000)] = 2
    # Training stops early (final evaluation, clean end) when fewer training sites remain,
    # e.g. because sites refused rounds that would exceed their privacy budget.
    min_training_sites: Annotated[int, Field(ge=1, le=10_000)] = 1
    sites_per_round: Annotated[int, Field(ge=0)] = 0
    seed: int = 0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    round_timeout_s: Annotated[float, Field(gt=0)] = 3600.0
    # A round needs updates from this fraction of the training sites it asked (at least
    # one site); fewer by round_timeout_s, or fewer sites connected within
    # connect_timeout_s, and the run stops with status "stopped" (resumable).
    quorum: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    # Once the quorum has answered, wait at most this long for the other sites.
    straggler_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    surface_metrics: Literal["final", "every_round"] = "final"
    # Which of a site's data sets to use (`[datasets.<name>]`); empty: its `[data]`.
    dataset: Annotated[str, Field(pattern=r"^$|" + _NAME_PATTERN)] = ""
    model: ModelConfig = ModelConfig()
    training: TrainingSettings = TrainingSettings()
    privacy: SamplePrivacySettings = SamplePrivacySettings()
    central_privacy: CentralPrivacySettings = CentralPrivacySettings()
    secure_aggregation: SecureAggregationSettings = SecureAggregationSettings()
    strategy: StrategySettings = StrategySettings()
    validation: ValidationSettings = ValidationSettings()
    report: ReportSettings = ReportSettings()
    plan: PlanSettings | None = None  # [run.plan]: common/config/plan_settings.py
    # The study's roster: only these sites are asked, and each site refuses a run that
    # does not list it with its own key. Empty: every connected site (no roster).
    sites: tuple[RosterEntry, ...] = ()
    # The run config's folder when `model.init.path` needs it (not part of the settings).
    _config_dir: Path | None = PrivateAttr(default=None)

    def init_file(self) -> Path | None:
        """The approved warm start's file (`model.init`), resolved; None without one."""
        init = self.model.init
        return None if init is None else init.location(self._config_dir)

    @model_validator(mode="after")
    def _roster_fits(self) -> RunSettings:
        names = [entry.name for entry in self.sites]
        doubles = sorted({name for name in names if names.count(name) > 1})
        if doubles:
            raise ValueError(f"sites: {', '.join(doubles)} listed more than once")
        prints = [entry.fingerprint for entry in self.sites]
        if len(set(prints)) != len(prints):
            raise ValueError("sites: two sites share one key fingerprint")
        if self.sites and self.min_sites > len(self.sites):
            raise ValueError(
                f"min_sites = {self.min_sites} but the roster (sites) lists {len(self.sites)}"
            )
        return self

    @property
    def roster(self) -> dict[str, RosterEntry]:
        """The roster by site name (empty without `[[run.sites]]`)."""
        return {entry.name: entry for entry in self.sites}

    @model_validator(mode="after")
    def _secure_aggregation_fits(self) -> RunSettings:
        if self.central_privacy.enabled and self.secure_aggregation.mode == "on":
            raise ValueError(
                'secure_aggregation.mode = "on" cannot combine with central_privacy: the '
                "server must clip each site's update, which secure aggregation hides from it "
                '(use sample-level DP at the sites, or set secure_aggregation.mode = "off")'
            )
        if not self.strategy.linear and self.secure_aggregation.mode == "on":
            raise ValueError(
                f'strategy "{self.strategy.name}" cannot combine with secure_aggregation.mode'
                ' = "on": it needs each site\'s update, and secure aggregation only reveals '
                'their sum (use fedavg, fedprox, fedadam or fedyogi, or set mode = "off")'
            )
        if not self.strategy.linear and self.central_privacy.enabled:
            raise ValueError(
                f'strategy "{self.strategy.name}" cannot combine with central_privacy: its '
                "guarantee is for the noised mean of clipped updates (use fedavg, fedprox, "
                "fedadam or fedyogi)"
            )
        bad_axes = [a for a in self.training.flip_axes if a >= self.model.spatial_dims]
        if bad_axes:
            raise ValueError(
                f"training.flip_axes {bad_axes}: a {self.model.spatial_dims}D model has spatial "
                f"axes 0..{self.model.spatial_dims - 1}"
            )
        if self.training.warmup_rounds > self.rounds:
            raise ValueError(
                f"training.warmup_rounds ({self.training.warmup_rounds}) must not exceed "
                f"rounds ({self.rounds})"
            )
        if self.training.class_weights != "none" and self.privacy.enabled:
            raise ValueError(
                'training.class_weights = "balanced" cannot combine with [run.privacy]: weights '
                "from the site's label counts make each example's loss depend on the others, "
                'which the DP-SGD accounting does not cover (set class_weights = "none")'
            )
        if self.training.dice == "batch" and self.privacy.enabled:
            raise ValueError(
                'training.dice = "batch" cannot combine with [run.privacy]: a batch Dice '
                "makes each example's gradient depend on the others, which per-example "
                'clipping cannot bound (set dice = "per_case")'
            )
        return self

    def secure_aggregation_for(self, training_sites: int) -> bool:
        """Whether rounds with this many training sites aggregate securely (\"auto\"
        stays off under central privacy or a robust strategy, which need each site's
        update)."""
        if self.central_privacy.enabled or not self.strategy.linear:
            return False
        return self.secure_aggregation.active_for(training_sites)

    @field_validator("model")
    @classmethod
    def _model_builds(cls, value: ModelConfig) -> ModelConfig:
        # Surface the factory's own checks (e.g. groups dividing channels) at load time.
        value.to_model_settings()
        return value

    def to_json(self) -> str:
        """Serialise for the Flower run config (a single string value). With a warm start,
        the run config's folder rides along outside the settings (the config hash does
        not cover it: the weights' hash is what is approved)."""
        if self._config_dir is None:
            return self.model_dump_json()
        return json.dumps({**self.model_dump(mode="json"), _CONFIG_DIR_KEY: str(self._config_dir)})


class SiteInfo(_Strict):
    """The `[site]` table: who this node is in the consortium."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    role: Role = Role.TRAIN


class DataSettings(_Strict):
    """The `[data]` table (or one `[datasets.<name>]` table): where a registered data set
    lives. `format = "auto"` goes by the file: `.toml` is a manifest (docs/data.md),
    `.npz` a MedMNIST-style array file."""

    path: Path
    format: Literal["auto", "npz", "manifest"] = "auto"

    @property
    def kind(self) -> Literal["npz", "manifest"]:
        if self.format != "auto":
            return self.format
        return "manifest" if self.path.suffix.lower() == ".toml" else "npz"


class NodeSettings(_Strict):
    """The `[node]` table: how the node reaches the SuperLink.

    By default the node speaks TLS, trusting only the consortium CA (`root_certificates`),
    and authenticates with the site's private key (`key`, from `consortia certs site`),
    which also signs every update. `insecure = true` is for local experiments only."""

    superlink: str = "127.0.0.1:9092"
    insecure: bool = False
    root_certificates: Path | None = None
    key: Path | None = None
    runtime_port: Annotated[int, Field(ge=1024, le=65535)] = 9094
    state_dir: Path | None = None
    # "warm": our long-lived executor forks a pre-imported process per task (fast);
    # "subprocess": Flower's stock isolation, a fresh `flwr-clientapp` per message.
    executor: Literal["warm", "subprocess"] = "warm"
    # Where this site trains and evaluates: "auto" (CUDA when present, else CPU), "cpu",
    # "cuda", "cuda:N" or "mps"; `consortia node start --device` overrides it.
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"

    def check_connection_files(self, source: str) -> None:
        """Raise unless TLS and site authentication are configured (checked when the
        node starts: simulated sites and `consortia data` never connect)."""
        if self.insecure:
            return
        if self.root_certificates is None:
            raise ConfigError(
                f"{source}: node.root_certificates: the consortium CA certificate (ca.pem) is "
                "required for TLS (insecure = true only for local experiments)"
            )
        if self.key is None:
            raise ConfigError(
                f"{source}: node.key: the site's private key (consortia certs site NAME) is "
                "required to authenticate with the server and sign updates"
            )

    @field_validator("superlink")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+:\d{1,5}", value):
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9092")
        return value


class SaliencySettings(_Strict):
    """The `[saliency]` table of a site config. A held-out site draws Grad-CAM saliency maps
    of the final global model on `images` of its cases (0: none) and keeps them in the
    node's state folder; `share = true` also sends them to the server. They show patient
    images: sharing them sends those images off-site."""

    images: Annotated[int, Field(ge=0, le=32)] = 4
    share: bool = False


class SiteSettings(_Strict):
    """A hospital's site config: identity, data and node connection."""

    site: SiteInfo
    data: DataSettings
    node: NodeSettings = NodeSettings()
    privacy: PrivacyPolicy = PrivacyPolicy()
    saliency: SaliencySettings = SaliencySettings()
    # More data sets on the same node, by name; a run picks one with `[run] dataset`.
    datasets: dict[Annotated[str, Field(pattern=_NAME_PATTERN)], DataSettings] = {}

    def dataset(self, name: str = "") -> DataSettings:
        """The data set a run asks for: `[data]` when unnamed, else `[datasets.<name>]`."""
        if not name:
            return self.data
        if name not in self.datasets:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise ConfigError(f"site {self.site.name}: no data set named {name!r} ({known})")
        return self.datasets[name]

    @property
    def state_path(self) -> Path:
        """Where the node keeps Flower's state, its logs and its privacy ledgers."""
        if self.node.state_dir is not None:
            return self.node.state_dir
        return Path.home() / ".consortia" / "nodes" / self.site.name

    @property
    def cache_dir(self) -> Path:
        """The node's cache of preprocessed arrays (invalidated by data set fingerprints)."""
        return self.state_path / "data-cache"

    @property
    def ledger_dir(self) -> Path:
        """The site's privacy ledgers, one file per data set."""
        return self.state_path / "privacy"


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The settings model that holds the key at `loc` (its last part), if any."""
    current: type[BaseModel] = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an item of a list of tables: same model as the list's items
        field = current.model_fields.get(part)
        if field is None:
            return None
        candidates = [field.annotation, *get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        current = nested[0]
    return current


def _did_you_mean(model: type[BaseModel] | None, loc: Sequence[int | str]) -> str:
    if model is None or not loc or not isinstance(loc[-1], str):
        return ""
    holder = _model_at(model, loc)
    if holder is None:
        return ""
    close = difflib.get_close_matches(loc[-1], list(holder.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(
    source: str, error: ValidationError, model: type[BaseModel] | None = None
) -> str:
    """One line per problem, naming the file and the field; an unknown key that is close
    to a known one of `model` gets a "did you mean"."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problem = item["msg"]
        if item["type"] == "extra_forbidden":
            problem = "unknown key" + _did_you_mean(model, item["loc"])
        elif item["type"] == "missing":
            problem = "required key is missing"
        elif item["type"] == "value_error":
            problem = problem.removeprefix("Value error, ")
        lines.append(f"{source}: {where}: {problem}")
    return "\n".join(lines)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


def _validate(model: type[_M], data: Mapping[str, Any], source: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err, model)) from None
    except ValueError as err:  # raised by the model factory's own checks
        raise ConfigError(f"{source}: model: {err}") from None


def load_run_settings(path: Path) -> RunSettings:
    """Read and validate a coordinator's run config (TOML with a `[run]` table)."""
    raw = _read_toml(path)
    unknown = set(raw) - {"run"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level table(s): {', '.join(sorted(unknown))}")
    if "run" not in raw:
        raise ConfigError(f"{path}: run: required table is missing")
    settings = _validate(RunSettings, raw["run"], f"{path} [run]")
    if settings.model.init is not None:
        settings._config_dir = path.resolve().parent
    return settings


def run_settings_from_json(text: str) -> RunSettings:
    """Rebuild run settings from the Flower run config (validated again: it crossed a wire)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"run config: settings are not valid JSON: {err}") from None
    config_dir = data.pop(_CONFIG_DIR_KEY, None) if isinstance(data, dict) else None
    settings = _validate(RunSettings, data, "run config")
    if isinstance(config_dir, str) and settings.model.init is not None:
        settings._config_dir = Path(config_dir)
    return settings


def load_site_settings(path: Path) -> SiteSettings:
    """Read and validate a site config; relative data paths are relative to the file."""
    raw = _read_toml(path)
    settings = _validate(SiteSettings, raw, str(path))

    def resolved(data: DataSettings, where: str) -> DataSettings:
        data_path = data.path
        if not data_path.is_absolute():
            data_path = (path.parent / data_path).resolve()
        if not data_path.exists():
            raise ConfigError(f"{path}: {where}.path: data set not found: {data_path}")
        return data.model_copy(update={"path": data_path})

    datasets = {
        name: resolved(data, f"datasets.{name}") for name, data in settings.datasets.items()
    }

    def relative(value: Path | None) -> Path | None:
        if value is None or value.is_absolute():
            return value
        return (path.parent / value).resolve()

    node = settings.node
    for field in ("root_certificates", "key"):
        file = relative(getattr(node, field))
        if file is not None and not file.is_file():
            raise ConfigError(f"{path}: node.{field}: file not found: {file}")
    return settings.model_copy(
        update={
            "data": resolved(settings.data, "data"),
            "datasets": datasets,
            "node": node.model_copy(
                update={
                    "state_dir": relative(node.state_dir),
                    "root_certificates": relative(node.root_certificates),
                    "key": relative(node.key),
                }
            ),
        }
    )
