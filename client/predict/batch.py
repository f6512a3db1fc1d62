"""Predict a list of images into an output folder, one image at a time; a failed image
is reported and the rest go on.

Per input: `<name>_seg.nii.gz` (segmentation), `<name>_seg.dcm` beside it for DICOM
input, or one row of `scores.csv` (classification). The output folder may not hold an
input, so an input is never overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from consortia.client.data.formats.volume import CaseProblem
from consortia.client.predict.exported import ExportedModel
from consortia.client.predict.inference import Predictor, read_input
from consortia.client.predict.writers import (
    output_stem,
    write_dicom_seg,
    write_nifti_mask,
    write_scores_csv,
)
from consortia.common.config.settings import Task
from consortia.common.errors import ConsortiaError

__all__ = ["SCORES_FILE", "PredictReport", "predict_images"]

logger = logging.getLogger("consortia.client")

SCORES_FILE: Final = "scores.csv"


@dataclass
class PredictReport:
    """What `predict_images` wrote and which inputs failed (path -> reason)."""

    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _check_out(out: Path, images: Sequence[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    resolved = out.resolve()
    for image in images:
        if image.exists() and image.resolve().parent == resolved and image.is_file():
            raise ConsortiaError(f"{out}: holds the input {image}; choose another output folder")


def predict_images(
    model: ExportedModel,
    images: Sequence[Path],
    out: Path,
    *,
    advance: Callable[[Path], None] | None = None,
) -> PredictReport:
    """Predict every image of `images` into `out` (`advance` is called after each)."""
    _check_out(out, images)
    predictor = Predictor(model)
    labels = model.card.labels
    report, taken = PredictReport(), set[str]()
    rows: list[tuple[str, np.ndarray]] = []
    for path in images:
        try:
            prediction = predictor.predict(read_input(path, model.card.modalities))
            stem = output_stem(path, taken)
            if prediction.scores is not None:
                rows.append((path.name, prediction.scores))
            else:
                report.written.append(write_nifti_mask(prediction, out / f"{stem}_seg.nii.gz"))
                if prediction.image.series is not None:
                    seg = write_dicom_seg(prediction, labels, out / f"{stem}_seg.dcm")
                    if seg is not None:
                        report.written.append(seg)
        except (CaseProblem, ConsortiaError) as err:
            report.failed[str(path)] = str(err).removeprefix(f"{path}: ")
        if advance is not None:
            advance(path)
    if model.card.task is Task.CLASSIFICATION and rows:
        report.written.append(write_scores_csv(rows, labels, out / SCORES_FILE))
    logger.info(
        "predicted %d image(s), %d failed", len(images) - len(report.failed), len(report.failed)
    )
    return report
