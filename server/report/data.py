"""What a run report says, as plain data: read from a run folder's `results.json` and
`provenance.json` (and shared saliency maps), never from anything a site did not send.

`build_report` returns the JSON that `consortia report --json` writes; the figures and
the HTML page are drawn from it (`report_figures`, `report_html`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from consortia.common.audit.provenance import PROVENANCE_FILE, verify_provenance
from consortia.common.errors import ConsortiaError
from consortia.common.logs import utc_now
from consortia.server.run.folder import RESULTS_FILE, read_results
from consortia.server.run.round_evaluation import HOLDOUT, TRAINING_SITES
from consortia.server.run.saliency_store import SALIENCY_DIR

__all__ = [
    "REPORT_SCHEMA",
    "ReportError",
    "build_report",
    "load_results",
    "primary_metric",
]

REPORT_SCHEMA: Final = "consortia.report/1"
# Metrics of the cross-site table, in order, per task.
_TABLE_METRICS: Final = {
    "segmentation": ("dice", "iou", "hd95", "asd"),
    "classification": ("auc", "accuracy", "sensitivity", "specificity", "f1"),
}
_POOLED_LABELS: Final = {
    HOLDOUT: "held-out sites (pooled)",
    TRAINING_SITES: "training sites (pooled)",
}


class ReportError(ConsortiaError):
    """A run folder that cannot be reported on; the message names the file."""


def load_results(run_dir: Path) -> dict[str, Any]:
    """The run's results.json, checked to be one with the parts a report reads."""
    try:
        results = read_results(run_dir, missing=f"not found (is {run_dir} a run folder?)")
    except ConsortiaError as err:
        raise ReportError(str(err)) from None
    path = run_dir / RESULTS_FILE
    for key, kind in (("rounds", list), ("sites", list), ("settings", dict)):
        if not isinstance(results.get(key), kind):
            raise ReportError(f"{path}: '{key}' is missing or not a {kind.__name__}")
    return results


def primary_metric(task: str) -> str:
    """The metric the learning curves follow."""
    return _TABLE_METRICS.get(task, ("dice",))[0]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _evaluation(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    evaluation = entry.get("evaluation")
    return evaluation if isinstance(evaluation, Mapping) else {}


def _curves(results: Mapping[str, Any], metric: str) -> dict[str, Any]:
    rounds = [entry for entry in results["rounds"] if isinstance(entry, Mapping)]
    names = sorted({site["name"] for site in results["sites"]})
    series: dict[str, list[float | None]] = {}
    for name in names:
        series[name] = [
            _number((_evaluation(e).get("sites") or {}).get(name, {}).get(metric)) for e in rounds
        ]
    for group, label in _POOLED_LABELS.items():
        values = [_number((_evaluation(e).get(group) or {}).get(metric)) for e in rounds]
        if any(value is not None for value in values):
            series[label] = values
    return {"metric": metric, "rounds": [entry["round"] for entry in rounds], "series": series}


def _interval(intervals: Mapping[str, Any] | None, metric: str) -> list[float] | None:
    value = (intervals or {}).get(metric)
    if isinstance(value, list) and len(value) == 2 and all(_number(v) is not None for v in value):
        return [float(value[0]), float(value[1])]
    return None


def _cross_site(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """The last evaluated model on every site's evaluation cases and pooled."""
    evaluated = [e for e in results["rounds"] if _evaluation(e).get("sites")]
    if not evaluated:
        return None
    entry = evaluated[-1]
    evaluation = _evaluation(entry)
    intervals = evaluation.get("intervals") or {}
    metrics = _TABLE_METRICS.get(results.get("task", ""), ("dice",))
    roles = {site["name"]: site["role"] for site in results["sites"]}

    def row(name: str, scope: str, values: Mapping[str, Any], ci: Mapping[str, Any] | None) -> dict:
        return {
            "name": name,
            "scope": scope,
            "cases": _number(values.get("cases")),
            "values": {metric: _number(values.get(metric)) for metric in metrics},
            "intervals": {metric: _interval(ci, metric) for metric in metrics},
        }

    rows = [
        row(name, roles.get(name, "unknown"), values, (intervals.get("sites") or {}).get(name))
        for name, values in sorted(evaluation["sites"].items(), key=lambda item: item[0])
        if isinstance(values, Mapping)
    ]
    for group, label in _POOLED_LABELS.items():
        if isinstance(evaluation.get(group), Mapping):
            rows.append(row(label, group, evaluation[group], intervals.get(group)))
    return {
        "model_round": entry["round"],
        "metrics": list(metrics),
        "rows": rows,
        "level": intervals.get("level"),
        "replicates": intervals.get("replicates"),
        "method": intervals.get("method"),
    }


def _privacy(results: Mapping[str, Any]) -> dict[str, Any]:
    privacy = results.get("privacy") or {}
    sites: dict[str, Any] = {}
    for name, site in sorted((privacy.get("sites") or {}).items()):
        per_round = []
        for entry in results["rounds"]:
            spent = (entry.get("privacy") or {}).get(name)
            if isinstance(spent, Mapping):
                per_round.append(
                    {
                        "round": entry["round"],
                        "epsilon": _number(spent.get("epsilon")),
                        "run_epsilon": _number(spent.get("run_epsilon")),
                        "noise_multiplier": _number(spent.get("noise_multiplier")),
                        "sample_rate": _number(spent.get("sample_rate")),
                        "steps": spent.get("steps"),
                    }
                )
        sites[name] = {
            "limit": _number(site.get("max_epsilon")),
            "delta": _number(site.get("delta")),
            "before_run": _number(site.get("epsilon_before_run")),
            "total": _number(site.get("epsilon")),
            "excluded": site.get("excluded"),
            "per_round": per_round,
        }
    settings = results["settings"]
    return {
        "sample_level": privacy.get("sample_level") or settings.get("privacy"),
        "central": privacy.get("central") or settings.get("central_privacy"),
        "sites": sites,
    }


def _participation(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for entry in results["rounds"]:
        if entry.get("round", 0) < 1:
            continue
        secure = entry.get("secure_aggregation")
        rows.append(
            {
                "round": entry["round"],
                "participants": list(entry.get("participants") or []),
                "left_out": dict(entry.get("left_out") or {}),
                "not_connected": list(entry.get("not_connected") or []),
                "kept_by_strategy": list((entry.get("strategy") or {}).get("kept") or []),
                "secure_aggregation": secure.get("status") if isinstance(secure, Mapping) else None,
                "duration_s": _number(entry.get("duration_s")),
                "upload_bytes": entry.get("upload_bytes"),
            }
        )
    return rows


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


def _provenance(run_dir: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    path = run_dir / PROVENANCE_FILE
    summary: dict[str, Any] = {
        "file": PROVENANCE_FILE,
        "present": path.is_file(),
        "config_hash": results.get("config_hash"),
        "app_hash": (results.get("app") or {}).get("app_hash"),
        "model_hashes": [
            {"round": e["round"], "sha256": e.get("model_sha256")}
            for e in results["rounds"]
            if e.get("model_sha256")
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


def _run_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    settings = results["settings"]
    done = [e["round"] for e in results["rounds"] if e.get("round", 0) >= 1]
    return {
        "name": results.get("run_name"),
        "task": results.get("task"),
        "status": results.get("status"),
        "error": results.get("error"),
        "stopped": results.get("stopped"),
        "ended_early": results.get("ended_early"),
        "started_at": results.get("started_at"),
        "finished_at": results.get("finished_at"),
        "flower_run_id": results.get("flower_run_id"),
        "rounds_planned": settings.get("rounds"),
        "rounds_done": max(done, default=0),
        "resumed": results.get("resumed") or [],
    }


def build_report(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data."""
    results = load_results(run_dir)
    settings = results["settings"]
    metric = primary_metric(str(results.get("task")))
    return {
        "schema": REPORT_SCHEMA,
        "generated_at": utc_now(),
        "run": _run_summary(results),
        "sites": [
            {key: site.get(key) for key in ("name", "role", "num_train", "num_eval")}
            for site in sorted(results["sites"], key=lambda site: str(site.get("name")))
        ],
        "learning_curves": _curves(results, metric),
        "cross_site": _cross_site(results),
        "privacy": _privacy(results),
        "participation": _participation(results),
        "settings": {
            key: settings.get(key)
            for key in ("model", "training", "strategy", "validation", "secure_aggregation")
        },
        "security": {
            **dict.fromkeys(("tls", "site_authentication", "signed_updates")),
            **(results.get("security") or {}),
            # null while undecided (a run that failed before its sites answered)
            "secure_aggregation": {
                "enabled": None,
                "reason": "not decided",
                **(results.get("secure_aggregation") or {}),
            },
        },
        "provenance": _provenance(run_dir, results),
        "saliency": _saliency(run_dir),
    }
