"""The model card an export carries: what a site needs to apply the model and to trust it.

The card is plain JSON (`consortia-model.json` beside every exported model, and the
`consortia` entry of a MONAI bundle's `configs/metadata.json`); docs/guide-clinic.md
describes it. It is built from the run folder alone (results.json, provenance.json, the
checkpoint) plus, where the run settings do not record the images' preprocessing, a
training site's data manifest, whose `[preprocess]` table and `[dataset] labels` are
copied as data. The run's `plan` (target spacing, orientation, normalisation, patch size),
when its settings have one, is copied as data whatever its fields.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final

from consortia.common.audit.provenance import PROVENANCE_FILE, provenance_sha256, read_provenance
from consortia.common.errors import ConsortiaError
from consortia.common.logs import utc_now
from consortia.server.run.record import RoundEntry, RunRecord

__all__ = [
    "CARD_FILE",
    "CARD_SCHEMA",
    "NORMALISATION",
    "ExportSource",
    "build_card",
    "card_text",
    "read_manifest_preprocessing",
]

CARD_FILE: Final = "consortia-model.json"
CARD_SCHEMA: Final = "consortia.model/1"
# What the trainer does to every image after `[preprocess]` (and `predict` again):
# consortia.client.training.trainer.normalize_images.
NORMALISATION: Final = "z-score per image and channel (unbiased std, floored at 1e-6)"
_PLAN_KEY: Final = "plan"
_SITE_OVERLAP: Final = 0.25
_PLAN_OVERLAP: Final = 0.5


@dataclass(frozen=True)
class ExportSource:
    """The run and round an export takes its model from."""

    run_dir: Path
    record: RunRecord
    entry: RoundEntry
    checkpoint: Path
    note: str | None


def read_manifest_preprocessing(path: Path) -> tuple[dict[str, Any], dict[str, str] | None]:
    """The `[preprocess]` table (with `[dataset] modalities`, when listed) and the
    `[dataset] labels` of a data manifest, as data."""
    try:
        with path.open("rb") as handle:
            manifest = tomllib.load(handle)
    except FileNotFoundError:
        raise ConsortiaError(f"{path}: manifest not found") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConsortiaError(f"{path}: not a readable TOML manifest ({err})") from None
    preprocess = manifest.get("preprocess")
    if not isinstance(preprocess, dict) or "spatial_size" not in preprocess:
        raise ConsortiaError(f"{path}: preprocess.spatial_size: required to export the model")
    dataset = manifest.get("dataset")
    labels = dataset.get("labels") if isinstance(dataset, dict) else None
    if labels is not None and not isinstance(labels, dict):
        raise ConsortiaError(f"{path}: dataset.labels: not a table of value = name")
    names = None if labels is None else {str(k): str(v) for k, v in labels.items()}
    modalities = dataset.get("modalities") if isinstance(dataset, dict) else None
    return {**preprocess, "modalities": modalities}, names


def _check_preprocess(preprocess: dict[str, Any], model: dict[str, Any], where: str) -> None:
    size = preprocess.get("spatial_size")
    dims = int(model.get("spatial_dims", 2))
    if (
        not isinstance(size, list)
        or len(size) != dims
        or not all(isinstance(n, int) and n >= 1 for n in size)
    ):
        raise ConsortiaError(
            f"{where}: preprocess.spatial_size {size!r}: the run's model is {dims}D, so it "
            f"needs {dims} positive sizes"
        )
    channels = int(preprocess.get("channels", 1))
    if channels != int(model.get("in_channels", 1)):
        raise ConsortiaError(
            f"{where}: preprocess.channels = {channels}, but the run's model takes "
            f"{model.get('in_channels', 1)} channel(s)"
        )


def _labels(names: dict[str, str] | None, classes: int, where: str) -> dict[str, str]:
    if names is None:
        return {str(value): f"class-{value}" for value in range(classes)}
    wanted = {str(value) for value in range(classes)}
    if set(names) != wanted:
        raise ConsortiaError(
            f"{where}: dataset.labels has values {sorted(names, key=int)}, but the run's model "
            f"has {classes} outputs (0..{classes - 1})"
        )
    return {key: names[key] for key in sorted(names, key=int)}


def _provenance(run_dir: Path, record: RunRecord, entry: RoundEntry) -> dict[str, Any]:
    """The hashes that tie the exported weights to the run's signed record."""
    section: dict[str, Any] = {
        "config_hash": record.config_hash,
        "app_hash": record.app.app_hash if record.app else None,
        "model_sha256": entry.model_sha256,
        "provenance_sha256": None,
        "signed": False,
        "audit_head": None,
    }
    path = run_dir / PROVENANCE_FILE
    if path.is_file():
        document = read_provenance(path)
        section["provenance_sha256"] = provenance_sha256(document)
        section["signed"] = bool(document.get("signatures"))
        audit = document["provenance"].get("audit_log")
        section["audit_head"] = audit.get("head") if isinstance(audit, dict) else None
    return section


def _metrics(record: RunRecord, entry: RoundEntry) -> dict[str, Any] | None:
    """The round's evaluation (held-out and per site) with its intervals, as recorded."""
    if entry.evaluation is None:
        return None
    evaluation = entry.evaluation.model_dump(mode="json", exclude_none=True)
    return {"round": entry.round, "roles": record.roles(), **evaluation}


def build_card(
    source: ExportSource,
    export_format: str,
    model_file: str,
    *,
    manifest: Path | None = None,
) -> dict[str, Any]:
    """The card of the model exported from `source` as `export_format` in `model_file`."""
    record = source.record
    settings = record.settings.model_dump(mode="json") if record.settings else {}
    model = dict(settings.get("model") or {})
    plan = settings.get(_PLAN_KEY)
    preprocess, names = (None, None)
    if manifest is not None:
        preprocess, names = read_manifest_preprocessing(manifest)
        _check_preprocess(preprocess, model, str(manifest))
    elif plan is None:
        raise ConsortiaError(
            f"{source.run_dir}: the run's settings record no preprocessing plan: pass "
            "--manifest with a training site's data manifest (its [preprocess] and labels)"
        )
    classes = int(model.get("out_channels", 2))
    return {
        "schema": CARD_SCHEMA,
        "format": export_format,
        "model_file": model_file,
        "task": record.task or settings.get("task"),
        "model": model,
        "labels": _labels(names, classes, str(manifest or source.run_dir)),
        "preprocessing": {
            "dataset": preprocess,
            _PLAN_KEY: plan,
            "normalisation": NORMALISATION,
            "axes": "channels first, then (D, H, W) for 3D or (H, W) for 2D",
        },
        "inference": _inference(plan, preprocess),
        "source": _source(source),
        "provenance": _provenance(source.run_dir, record, source.entry),
        "privacy": record.privacy.model_dump(mode="json") if record.privacy else None,
        "metrics": _metrics(record, source.entry),
        "exported_at": utc_now(),
        "versions": {name: version(name) for name in ("consortia", "torch", "monai")},
    }


def _inference(plan: Any, preprocess: dict[str, Any] | None) -> dict[str, Any]:
    """The sliding window the sites evaluate with: the plan's patches with Gaussian
    weights, or (no plan) one window of the whole `[preprocess]` size."""
    if isinstance(plan, dict) and plan.get("patch_size"):
        return {
            "roi_size": plan["patch_size"],
            "overlap": plan.get("sliding_window_overlap", _PLAN_OVERLAP),
            "mode": "gaussian",
            "sw_batch_size": 4,
        }
    size = (preprocess or {}).get("spatial_size")
    return {"roi_size": size, "overlap": _SITE_OVERLAP, "mode": "constant", "sw_batch_size": 1}


def _source(source: ExportSource) -> dict[str, Any]:
    record = source.record
    return {
        "run_name": record.run_name or source.run_dir.name,
        "run_folder": source.run_dir.name,
        "run_status": record.status,
        "round": source.entry.round,
        "rounds_planned": record.planned_rounds,
        "rounds_recorded": max((e.round for e in record.rounds), default=0),
        "note": source.note,
    }


def card_text(card: dict[str, Any]) -> str:
    """The card as the JSON text written to disk."""
    return json.dumps(card, indent=2, sort_keys=False) + "\n"
