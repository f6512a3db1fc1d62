"""What a run report says, as plain data: read from a run folder's `results.json` and
`provenance.json` (and shared saliency maps), never from anything a site did not send.

`build_report` returns the JSON that `consortia report --json` writes; the figures and
the HTML page are drawn from it (`report_figures`, `report_html`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from consortia.common.audit.provenance import PROVENANCE_FILE, verify_provenance
from consortia.common.errors import ConsortiaError
from consortia.common.logs import utc_now
from consortia.server.run.folder import SALIENCY_DIR, read_record
from consortia.server.run.record import (
    HOLDOUT,
    TRAINING_SITES,
    Evaluation,
    IntervalMap,
    Metrics,
    RoundEntry,
    RunRecord,
)

__all__ = [
    "REPORT_SCHEMA",
    "ReportError",
    "build_report",
    "distance_unit",
    "load_results",
    "metric_units",
    "primary_metric",
]

REPORT_SCHEMA: Final = "consortia.report/1"
# Metrics of the cross-site table, in order, per task.
_TABLE_METRICS: Final = {
    "segmentation": ("dice", "iou", "hd95", "asd"),
    "classification": ("auc", "balanced_accuracy", "accuracy", "sensitivity", "specificity", "f1"),
}
_POOLED_LABELS: Final = {
    HOLDOUT: "held-out sites (pooled)",
    TRAINING_SITES: "training sites (pooled)",
}
_NO_EVALUATION: Final = Evaluation()
# Units of the metrics: overlap and classification scores are fractions; surface distances
# are in mm where the run's plan resampled to a spacing (`[run.plan] target_spacing`),
# else in voxels (pixels in 2D).
_FRACTION: Final = "0-1"
_DISTANCES: Final = ("hd95", "asd")
# Strategy settings by the strategies that use them (the others do not apply).
_STRATEGY_FIELDS: Final = {
    "proximal_mu": ("fedprox",),
    "server_learning_rate": ("fedadam", "fedyogi", "fedavgm"),
    "server_momentum": ("fedavgm",),
    "beta_1": ("fedadam", "fedyogi"),
    "beta_2": ("fedadam", "fedyogi"),
    "tau": ("fedadam", "fedyogi"),
    "trim_fraction": ("trimmed_mean",),
    "byzantine_sites": ("krum", "multi_krum"),
    "multi_krum_keep": ("multi_krum",),
}
_SGD_ONLY: Final = ("momentum", "nesterov")


class ReportError(ConsortiaError):
    """A run folder that cannot be reported on; the message names the file."""


def load_results(run_dir: Path) -> RunRecord:
    """The run's results.json, checked to be one with the parts a report reads."""
    try:
        record = read_record(run_dir, missing=f"not found (is {run_dir} a run folder?)")
    except ConsortiaError as err:
        raise ReportError(str(err)) from None
    if record.settings is None:
        raise ReportError(f"{run_dir / 'results.json'}: 'settings' is missing")
    return record


def primary_metric(task: str | None) -> str:
    """The metric the learning curves follow."""
    return _TABLE_METRICS.get(task or "", ("dice",))[0]


def distance_unit(record: RunRecord) -> str:
    """The unit of surface distances: mm where the run's plan resampled every image to a
    spacing in mm, else voxels."""
    settings = record.settings.model_dump() if record.settings is not None else {}
    plan = settings.get("plan")
    return "mm" if isinstance(plan, Mapping) and plan.get("target_spacing") else "voxels"


def metric_units(record: RunRecord) -> dict[str, str]:
    """Metric name -> its unit, for every metric of the run's task."""
    metrics = _TABLE_METRICS.get(record.task or "", ("dice",))
    distance = distance_unit(record)
    return {metric: distance if metric in _DISTANCES else _FRACTION for metric in metrics}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _evaluation(entry: RoundEntry) -> Evaluation:
    return entry.evaluation or _NO_EVALUATION


def _curves(record: RunRecord, metric: str) -> dict[str, Any]:
    rounds = record.rounds
    names = sorted({site.name for site in record.sites})
    series: dict[str, list[float | None]] = {}
    for name in names:
        series[name] = [_number(_evaluation(e).sites.get(name, {}).get(metric)) for e in rounds]
    for group, label in _POOLED_LABELS.items():
        values = [_number((_evaluation(e).pooled(group) or {}).get(metric)) for e in rounds]
        if any(value is not None for value in values):
            series[label] = values
    return {"metric": metric, "rounds": [entry.round for entry in rounds], "series": series}


def _interval(intervals: IntervalMap | None, metric: str) -> list[float] | None:
    value = (intervals or {}).get(metric)
    if isinstance(value, list) and len(value) == 2 and all(_number(v) is not None for v in value):
        return [float(value[0]), float(value[1])]
    return None


def _row(
    name: str, scope: str, values: Metrics, ci: IntervalMap | None, metrics: tuple[str, ...]
) -> dict[str, Any]:
    return {
        "name": name,
        "scope": scope,
        "cases": _number(values.get("cases")),
        "values": {metric: _number(values.get(metric)) for metric in metrics},
        "intervals": {metric: _interval(ci, metric) for metric in metrics},
    }


def _cross_site(record: RunRecord) -> dict[str, Any] | None:
    """The last evaluated model on every site's evaluation cases and pooled."""
    evaluated = [e for e in record.rounds if _evaluation(e).sites]
    if not evaluated:
        return None
    entry = evaluated[-1]
    evaluation = _evaluation(entry)
    intervals = evaluation.intervals
    metrics = _TABLE_METRICS.get(record.task or "", ("dice",))
    roles = record.roles()
    site_intervals = intervals.sites if intervals else {}
    rows = [
        _row(name, roles.get(name, "unknown"), values, site_intervals.get(name), metrics)
        for name, values in sorted(evaluation.sites.items(), key=lambda item: item[0])
    ]
    for group, label in _POOLED_LABELS.items():
        pooled = evaluation.pooled(group)
        if pooled is not None:
            ci = intervals.of_group(group) if intervals else None
            rows.append(_row(label, group, pooled, ci, metrics))
    return {
        "model_round": entry.round,
        "metrics": list(metrics),
        "rows": rows,
        "level": intervals.level if intervals else None,
        "replicates": intervals.replicates if intervals else None,
        "method": intervals.method if intervals else None,
    }


def _baselines(record: RunRecord) -> dict[str, Any] | None:
    """Federated, pooled and local-only side by side on the held-out sites (present
    after `consortia run --simulation --baselines`)."""
    baselines = record.baselines
    evaluated = [e for e in record.rounds if _evaluation(e).holdout is not None]
    if baselines is None or not evaluated:
        return None
    metrics = _TABLE_METRICS.get(record.task or "", ("dice",))
    final = _evaluation(evaluated[-1])
    intervals = final.intervals
    rows = [
        _row(
            "federated",
            ", ".join(name for name, role in sorted(record.roles().items()) if role == "train"),
            final.holdout or {},
            intervals.holdout if intervals else None,
            metrics,
        )
    ]
    if record.started_at and record.finished_at:
        start = datetime.fromisoformat(record.started_at.replace("Z", "+00:00"))
        end = datetime.fromisoformat(record.finished_at.replace("Z", "+00:00"))
        rows[0]["wall_s"] = (end - start).total_seconds()
    others = [("pooled", baselines.pooled)] if baselines.pooled else []
    others += [(f"local only: {name}", result) for name, result in baselines.local.items()]
    for label, result in others:
        row = _row(
            label,
            ", ".join(result.training_sites),
            result.holdout or {},
            result.holdout_intervals,
            metrics,
        )
        rows.append({**row, "wall_s": result.wall_s, "status": result.status})
    return {"metrics": list(metrics), "rows": rows}


def _privacy(record: RunRecord) -> dict[str, Any]:
    privacy = record.privacy
    sites: dict[str, Any] = {}
    for name, site in sorted((privacy.sites if privacy else {}).items()):
        per_round = []
        for entry in record.rounds:
            spent = (entry.privacy or {}).get(name)
            if spent is not None:
                per_round.append(
                    {
                        "round": entry.round,
                        "epsilon": _number(spent.epsilon),
                        "run_epsilon": _number(spent.run_epsilon),
                        "noise_multiplier": _number(spent.noise_multiplier),
                        "sample_rate": _number(spent.sample_rate),
                        "steps": spent.steps,
                    }
                )
        sites[name] = {
            "limit": _number(site.max_epsilon),
            "delta": _number(site.delta),
            "before_run": _number(site.epsilon_before_run),
            "total": _number(site.epsilon),
            "excluded": site.excluded,
            "per_round": per_round,
        }
    settings = record.settings
    sample_level = privacy.sample_level.model_dump(exclude_unset=True) if privacy else None
    central = (
        privacy.central.model_dump(exclude_unset=True) if privacy and privacy.central else None
    )
    return {
        "sample_level": sample_level or (settings.privacy if settings else None),
        "central": central or (settings.central_privacy if settings else None),
        "sites": sites,
    }


def _participation(record: RunRecord) -> list[dict[str, Any]]:
    return [
        {
            "round": entry.round,
            "participants": list(entry.participants or []),
            "left_out": dict(entry.left_out or {}),
            "not_connected": list(entry.not_connected or []),
            "kept_by_strategy": list((entry.strategy.kept if entry.strategy else None) or []),
            "secure_aggregation": (
                entry.secure_aggregation.status if entry.secure_aggregation else None
            ),
            "duration_s": _number(entry.duration_s),
            "upload_bytes": entry.upload_bytes,
        }
        for entry in record.trained_rounds()
    ]


def _signers(document: Mapping[str, Any]) -> list[str]:
    """Each signer with what the report checked: the signature over the content (its
    holder's identity needs the CA and the sites' keys: `consortia audit verify`)."""
    problems = verify_provenance(document, ca_cert=None, site_keys=None)
    labelled = []
    for entry in document.get("signatures") or []:
        signer = str(entry.get("signer", "signature")) if isinstance(entry, Mapping) else "?"
        prefix = (
            "server signature"
            if signer == "server"
            else f"countersignature of site {signer.removeprefix('site:')}"
        )
        if any(problem.startswith(prefix) for problem in problems):
            labelled.append(f"{signer} (INVALID signature)")
        else:
            labelled.append(f"{signer} (signature valid; signer unverified: audit verify --ca)")
    return labelled


def _provenance(run_dir: Path, record: RunRecord) -> dict[str, Any]:
    path = run_dir / PROVENANCE_FILE
    summary: dict[str, Any] = {
        "file": PROVENANCE_FILE,
        "present": path.is_file(),
        "config_hash": record.config_hash,
        "app_hash": record.app.app_hash if record.app else None,
        "model_hashes": [
            {"round": e.round, "sha256": e.model_sha256} for e in record.rounds if e.model_sha256
        ],
        "signatures": [],
        "audit_head": None,
        "audit_records": None,
        "participants": [],
    }
    if not summary["present"]:
        return summary
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        body = document["provenance"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReportError(f"{path}: unreadable ({err})") from None
    audit = body.get("audit_log") or {}
    summary.update(
        signatures=_signers(document),
        audit_head=audit.get("head"),
        audit_records=audit.get("records"),
        participants=[
            {
                "site": p.get("site"),
                "role": p.get("role"),
                "dataset_fingerprint": p.get("dataset_fingerprint"),
                "node_audit_head": p.get("audit_head"),
            }
            for p in body.get("participants") or []
        ],
    )
    return summary


def _saliency(run_dir: Path) -> list[dict[str, str]]:
    """Saliency maps a held-out site chose to share: `saliency/<site>/*.png`."""
    folder = run_dir / SALIENCY_DIR
    if not folder.is_dir():
        return []
    return [
        {"site": png.parent.name, "file": png.relative_to(run_dir).as_posix()}
        for png in sorted(folder.glob("*/*.png"))
    ]


def _run_summary(record: RunRecord) -> dict[str, Any]:
    return {
        "name": record.run_name,
        "task": record.task,
        "status": record.status,
        "error": record.error,
        "stopped": record.stopped.model_dump() if record.stopped else None,
        "ended_early": record.ended_early,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "flower_run_id": record.flower_run_id,
        "rounds_planned": record.planned_rounds,
        "rounds_done": max((e.round for e in record.trained_rounds()), default=0),
        "resumed": [resumed.model_dump() for resumed in record.resumed],
    }


def _settings(record: RunRecord) -> dict[str, Any]:
    """The settings sections, each with only the settings that apply to this run (no
    FedAdam rates under FedAvg, no momentum without SGD, no SecAgg+ knobs when off)."""
    settings = record.settings
    if settings is None:
        return dict.fromkeys(("model", "training", "strategy", "validation"))
    strategy = dict(settings.strategy or {})
    name = strategy.get("name")
    for key, users in _STRATEGY_FIELDS.items():
        if name not in users:
            strategy.pop(key, None)
    training = dict(settings.training or {})
    if training.get("optimizer") != "sgd":
        for key in _SGD_ONLY:
            training.pop(key, None)
    if not training.get("flip_axes"):
        training.pop("flip_axes", None)
    secure = dict(settings.secure_aggregation or {})
    if secure.get("mode") == "off":
        secure = {"mode": "off"}
    return {
        "model": settings.model,
        "training": training or None,
        "strategy": strategy or None,
        "validation": settings.validation,
        "secure_aggregation": secure or None,
    }


def _security(record: RunRecord) -> dict[str, Any]:
    security = record.security
    decision = record.secure_aggregation
    return {
        "tls": security.tls if security else None,
        "site_authentication": security.site_authentication if security else None,
        "signed_updates": security.signed_updates if security else None,
        # null while undecided (a run that failed before its sites answered)
        "secure_aggregation": {
            "enabled": None,
            "reason": "not decided",
            **(decision.model_dump(exclude_unset=True) if decision else {}),
        },
    }


def build_report(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data."""
    record = load_results(run_dir)
    return {
        "schema": REPORT_SCHEMA,
        "generated_at": utc_now(),
        "run": _run_summary(record),
        "sites": [
            {
                "name": site.name,
                "role": site.role,
                "num_train": site.num_train,
                "num_eval": site.num_eval,
            }
            for site in sorted(record.sites, key=lambda site: site.name)
        ],
        "learning_curves": _curves(record, primary_metric(record.task)),
        "cross_site": _cross_site(record),
        "baselines": _baselines(record),
        "privacy": _privacy(record),
        "participation": _participation(record),
        "units": metric_units(record),
        "settings": _settings(record),
        "security": _security(record),
        "provenance": _provenance(run_dir, record),
        "saliency": _saliency(run_dir),
    }
