"""The baselines of a simulated study: the same study trained pooled and at each training
site alone, scored on the same held-out sites (`consortia run --simulation --baselines`).

Each baseline is one more run of the same ServerApp and ClientApp on Flower's simulation
engine, with the study's settings (recipe, rounds, epochs, model, privacy) and other
simulated sites: ``pooled`` has one training site holding every training site's cases,
``local-<site>`` has that site alone; both keep the study's held-out sites. The server
never trains: training stays in the sites' ClientApp, so `server/` imports nothing from
`client/` (docs/performance.md, "Baselines"). Each baseline's sites get a node state
folder of their own under the run's work folder, so a baseline spends nothing from the
simulated sites' own privacy ledgers.

The pooled site's data set is the training sites' npz files joined split by split (read
with numpy at the coordinator, which in a simulation holds every simulated site's data);
manifest data sets cannot be joined here and get a clear error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from consortia.common.config.settings import Role, RunSettings, SiteSettings, load_site_settings
from consortia.common.errors import ConfigError
from consortia.common.files import json_default, write_text_atomic
from consortia.server.control import toml_string
from consortia.server.run.record import (
    HOLDOUT,
    BaselineResult,
    Baselines,
    RunRecord,
)

__all__ = [
    "BASELINES_DIR",
    "POOLED",
    "BaselinePlan",
    "baseline_result",
    "baseline_settings",
    "plan_baselines",
    "record_baselines",
    "site_toml",
]

BASELINES_DIR: Final = "baselines"
POOLED: Final = "pooled"
_SPLIT_KEYS: Final = tuple(
    f"{split}_{kind}"
    for split in ("train", "val", "test")
    for kind in ("images", "labels", "masks")
)


@dataclass(frozen=True)
class BaselinePlan:
    """One baseline: its label, the training sites it trains on and its simulated sites."""

    label: str
    mode: Literal["pooled", "local"]
    training_sites: tuple[str, ...]
    configs: tuple[Path, ...]


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item, where) for item in value) + "]"
    raise ConfigError(f"{where}: cannot write {type(value).__name__} to a site config")


def _toml_tables(data: Mapping[str, Any], prefix: str) -> list[str]:
    lines = [f"[{prefix}]"] if prefix else []
    tables = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value, f'{prefix}.{key}')}")
    for key, table in tables:
        lines += ["", *_toml_tables(table, f"{prefix}.{key}" if prefix else key)]
    return lines


def site_toml(site: SiteSettings) -> str:
    """A validated site config as TOML (paths absolute, as `load_site_settings` gives)."""
    return "\n".join(_toml_tables(site.model_dump(mode="json", exclude_none=True), "")) + "\n"


def _write_site(site: SiteSettings, folder: Path, *, name: str | None = None) -> Path:
    """A copy of `site` under `folder` (its node state there too), optionally renamed."""
    state = folder / "node"
    update: dict[str, Any] = {"node": site.node.model_copy(update={"state_dir": state})}
    if name is not None:
        update["site"] = site.site.model_copy(update={"name": name})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.toml"
    path.write_text(site_toml(site.model_copy(update=update)), encoding="utf-8")
    load_site_settings(path)  # what the simulated site will read must validate
    return path


def _pooled_npz(sources: Mapping[str, Path], dest: Path) -> Path:
    """The training sites' npz data sets joined split by split into `dest`."""
    parts: dict[str, list[np.ndarray]] = {}
    for name, path in sources.items():
        if path.suffix.lower() != ".npz":
            raise ConfigError(
                f"--baselines: site {name} uses the manifest {path}; the pooled baseline can "
                "join npz data sets only (use the in-process benchmark, "
                "tests/benchmarks/learning.py, for manifest data sets)"
            )
        with np.load(path, allow_pickle=False) as archive:
            present = [key for key in _SPLIT_KEYS if key in archive.files]
            if parts and sorted(present) != sorted(parts):
                raise ConfigError(
                    f"--baselines: {path} holds the arrays {present}, the other training "
                    f"sites {sorted(parts)}; the pooled baseline needs the same in every site"
                )
            for key in present:
                parts.setdefault(key, []).append(archive[key])
    arrays = {}
    for key, values in parts.items():
        shapes = {value.shape[1:] for value in values}
        if len(shapes) != 1:
            raise ConfigError(
                f"--baselines: the training sites' {key} differ in shape {sorted(shapes)}; "
                "the pooled baseline needs one image size"
            )
        arrays[key] = np.concatenate(values)
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest, **arrays)  # type: ignore[arg-type]
    return dest


def plan_baselines(
    configs: Sequence[Path], settings: RunSettings, work_dir: Path
) -> list[BaselinePlan]:
    """The pooled and local-only baselines of a simulated study, their site configs
    written under `work_dir`; errors name the site config or the data set."""
    sites = {path: load_site_settings(path) for path in configs}
    training = {p: s for p, s in sites.items() if s.site.role is Role.TRAIN}
    held_out = {p: s for p, s in sites.items() if s.site.role is Role.HOLDOUT}
    if not held_out or not training:
        raise ConfigError(
            "--baselines needs at least one training and one held-out site (role = "
            f'"holdout"); the folder has {len(training)} and {len(held_out)}'
        )
    root = work_dir / BASELINES_DIR

    def holdouts(label: str) -> tuple[Path, ...]:
        # Each baseline's held-out sites have node state of their own: a site evaluates a
        # study's round once (its evaluation allowance), and every baseline is a new model.
        return tuple(
            _write_site(site, root / label / "holdout" / site.site.name)
            for site in held_out.values()
        )

    names = [site.site.name for site in training.values()]
    pooled_data = _pooled_npz(
        {s.site.name: s.dataset(settings.dataset).path for s in training.values()},
        root / POOLED / "data.npz",
    )
    first = next(iter(training.values()))
    data = first.dataset(settings.dataset).model_copy(update={"path": pooled_data, "format": "npz"})
    pooled_site = first.model_copy(
        update={"data": data, "datasets": {settings.dataset: data} if settings.dataset else {}}
    )
    plans = [
        BaselinePlan(
            POOLED,
            "pooled",
            tuple(names),
            (_write_site(pooled_site, root / POOLED, name=POOLED), *holdouts(POOLED)),
        )
    ]
    for site in training.values():
        label = f"local-{site.site.name}"
        config = _write_site(site, root / label)
        plans.append(BaselinePlan(label, "local", (site.site.name,), (config, *holdouts(label))))
    return plans


def baseline_settings(settings: RunSettings, plan: BaselinePlan) -> RunSettings:
    """The study's settings for one baseline: the same recipe, rounds, epochs, model and
    privacy; every site of the baseline taking part (no roster, no site sampling) and no
    secure aggregation (it changes no weights, and one training site has nothing to hide
    its update among)."""
    data = settings.model_dump()
    data.update(
        min_sites=len(plan.configs),
        min_training_sites=1,
        sites_per_round=0,
        sites=(),
        secure_aggregation={**data["secure_aggregation"], "mode": "off"},
    )
    return RunSettings.model_validate(data)


def _seconds(record: RunRecord) -> float | None:
    if not record.started_at or not record.finished_at:
        return None
    start = datetime.fromisoformat(record.started_at.replace("Z", "+00:00"))
    end = datetime.fromisoformat(record.finished_at.replace("Z", "+00:00"))
    return (end - start).total_seconds()


def baseline_result(plan: BaselinePlan, run_dir: Path) -> BaselineResult:
    """One baseline run's final model on the held-out sites, from its `results.json`."""
    results = run_dir / "results.json"
    record = RunRecord.from_json(results.read_text(encoding="utf-8"), str(results))
    evaluated = [entry.evaluation for entry in record.rounds if entry.evaluation is not None]
    final = evaluated[-1] if evaluated else None
    intervals = final.intervals if final is not None else None
    return BaselineResult(
        run_name=run_dir.name,
        training_sites=list(plan.training_sites),
        status=record.status,
        holdout=final.holdout if final is not None else None,
        holdout_intervals=intervals.of_group(HOLDOUT) if intervals is not None else None,
        wall_s=_seconds(record),
    )


def record_baselines(run_dir: Path, results: Mapping[str, BaselineResult]) -> Baselines:
    """Write the baselines into the federated run's `results.json` (through `RunRecord`,
    atomically); returns what was written."""
    path = run_dir / "results.json"
    record = RunRecord.from_json(path.read_text(encoding="utf-8"), str(path))
    baselines = Baselines(
        pooled=results.get(POOLED),
        local={
            result.training_sites[0]: result for label, result in results.items() if label != POOLED
        },
    )
    updated = record.model_copy(update={"baselines": baselines})
    text = json.dumps(updated.to_json(), indent=2, allow_nan=False, default=json_default)
    write_text_atomic(path, text)
    return baselines
