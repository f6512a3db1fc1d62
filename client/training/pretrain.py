"""A study's warm start trained on public data (`consortia model pretrain`): the run's model
trained centrally, with the site's own trainer, on a data set that no site contributes,
saved with the weights' SHA-256 that `[run.model.init]` approves.

It trains on every case of the data set's `train` split (a public manifest puts all its
cases there) with the run's `[run.training]` optimiser, schedule and augmentation, and
without DP: the data are public. Optionally it scores the result on another data set
(e.g. a held-out site's manifest) so the warm start's own quality is on record.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from consortia.client.data.dataset import SiteDataset
from consortia.client.training.trainer import RoundRecipe, evaluate_local, train_local
from consortia.common.config.settings import RunSettings, Task
from consortia.common.errors import ConfigError
from consortia.common.files import write_text_atomic
from consortia.common.metrics.classification import finalize_classification
from consortia.common.metrics.segmentation import finalize_segmentation
from consortia.common.networks.models import build_model
from consortia.common.networks.warm_start import save_weights

__all__ = ["EVALUATION_SPLITS", "Pretrained", "evaluate_model", "pretrain", "warm_run_config"]

logger = logging.getLogger("consortia.client")

#: A data set given to `--evaluate` is scored on all of its cases (as a held-out site is).
EVALUATION_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Pretrained:
    """What `pretrain` wrote: the checkpoint, its hashes and how it was made."""

    checkpoint: str
    sha256: str  # of the weights: the value of `model.init.sha256`
    file_sha256: str
    data: str  # the data set's name
    data_fingerprint: str
    cases: int
    epochs: int
    mean_loss: float
    train_s: float
    evaluation: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The record written beside the checkpoint (`<checkpoint>.json`)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def evaluate_model(
    model: torch.nn.Module, settings: RunSettings, data: SiteDataset, device: torch.device
) -> dict[str, float]:
    """The model's metrics on every case of `data` (Dice, IoU ...; or AUC ...)."""
    arrays = data.load(settings.task, EVALUATION_SPLITS)
    result = evaluate_local(
        model,
        arrays,
        settings.task,
        num_classes=settings.model.out_channels,
        batch_size=settings.training.batch_size,
        device=device,
        surface_distances=False,
    )
    if settings.task is Task.SEGMENTATION:
        return finalize_segmentation(result.sums)
    return finalize_classification(result.sums, result.histograms)


def pretrain(
    settings: RunSettings,
    data: Path,
    out: Path,
    *,
    epochs: int,
    device: torch.device,
    cache_dir: Path | None = None,
    evaluate: Path | None = None,
) -> Pretrained:
    """Train the run's model on `data` (a manifest or npz) for `epochs`, save its state
    dict to `out` and a record to `<out>.json`; with `evaluate`, score it there."""
    dataset = SiteDataset.open(data, cache_dir=cache_dir)
    if dataset.task is not None and dataset.task is not settings.task:
        raise ConfigError(f"{data}: a {dataset.task.value} data set, the run is {settings.task}")
    arrays = dataset.load(settings.task, ("train",))
    if len(arrays) == 0:
        raise ConfigError(f"{data}: no training cases")
    torch.manual_seed(settings.seed)
    model = build_model(settings.model.to_model_settings())
    recipe = RoundRecipe.for_round(settings.training, 1, 1)
    logger.info("pretraining on %d cases of %s for %d epochs", len(arrays), dataset.name, epochs)
    result = train_local(
        model,
        arrays,
        settings.task,
        epochs=epochs,
        batch_size=settings.training.batch_size,
        learning_rate=settings.training.learning_rate,
        seed=settings.seed,
        device=device,
        recipe=recipe,
    )
    sha256, file_sha256 = save_weights(model, out)
    scores: dict[str, Any] = {}
    if evaluate is not None:
        held = SiteDataset.open(evaluate, cache_dir=cache_dir)
        metrics = evaluate_model(model, settings, held, device)
        # JSON has no NaN: an undefined metric (e.g. HD95 without a prediction) is null
        scores = {"data": held.name} | {k: None if math.isnan(v) else v for k, v in metrics.items()}
    record = Pretrained(
        checkpoint=out.name,
        sha256=sha256,
        file_sha256=file_sha256,
        data=dataset.name,
        data_fingerprint=dataset.fingerprint,
        cases=len(arrays),
        epochs=epochs,
        mean_loss=result.mean_loss,
        train_s=round(result.compute_s, 1),
        evaluation=scores,
    )
    write_text_atomic(out.with_name(out.name + ".json"), record.to_json())
    return record


def warm_run_config(run_config: Path, checkpoint: Path, sha256: str, dest: Path) -> None:
    """Write `dest`: the run config's text with a `[run.model.init]` table naming
    `checkpoint` (relative to `dest` when it can be) and its weights' SHA-256."""
    text = run_config.read_text(encoding="utf-8")
    if tomllib.loads(text).get("run", {}).get("model", {}).get("init") is not None:
        raise ConfigError(f"{run_config}: already names a warm start (model.init)")
    try:
        path = os.path.relpath(checkpoint.resolve(), dest.resolve().parent)
    except ValueError:  # another drive (Windows)
        path = str(checkpoint.resolve())
    table = (
        "\n[run.model.init]            # the approved warm start (consortia model pretrain)\n"
        f"path = {json.dumps(Path(path).as_posix())}\n"
        f'sha256 = "{sha256}"\n'
    )
    write_text_atomic(dest, text.rstrip("\n") + "\n" + table)
