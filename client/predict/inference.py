"""Predict one image: read it as training does, prepare it, infer, map back to its grid.

The image is read by the data readers (NIfTI, PNG, a DICOM file or series folder) and
prepared exactly as the study's sites prepared their cases: the run's `[run.plan]` by
`apply_plan`, or else the data set's `[preprocess]` by `prepare_image`; then z-scored by
the trainer's `normalize_images`. Segmentation runs MONAI's `SlidingWindowInferer` with
the settings of the card (the plan's patch size, overlap and Gaussian weights, as the
sites evaluate; without a plan one window of the whole prepared image) and takes the
class probabilities back to the input's grid (`geometry.to_input_grid`) before the
argmax. Classification gives the softmax scores of the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from consortia.client.data.dicom.series import DicomSeries, read_dicom_folder, read_dicom_series
from consortia.client.data.formats.geometry import grid_affine
from consortia.client.data.formats.nifti import read_nifti
from consortia.client.data.formats.raster import read_png
from consortia.client.data.formats.volume import CaseProblem, ImageVolume
from consortia.client.data.preprocess import apply_plan, prepare_image
from consortia.client.predict.exported import ExportedModel
from consortia.client.predict.geometry import model_grid_shape, to_input_grid
from consortia.client.training.trainer import normalize_images
from consortia.common.config.settings import Task

__all__ = ["InputImage", "Prediction", "Predictor", "read_input"]

_NIFTI = (".nii", ".nii.gz")
_DICOM = (".dcm", ".dicom", "")


@dataclass(frozen=True)
class InputImage:
    """An input as read: the volume, and the series where it is DICOM."""

    path: Path
    volume: ImageVolume
    series: DicomSeries | None = None

    @property
    def kind(self) -> str:
        if self.series is not None:
            return "dicom"
        return "nifti" if self.path.name.lower().endswith(_NIFTI) else "png"


@dataclass(frozen=True)
class Prediction:
    """A mask (the input's spatial shape, uint8 label values) or class scores."""

    image: InputImage
    mask: np.ndarray | None = None
    scores: np.ndarray | None = None


def read_input(path: Path, modalities: tuple[str, ...] | None = None) -> InputImage:
    """The image at `path` (NIfTI, PNG, a DICOM file or a folder of one series)."""
    if not path.exists():
        raise CaseProblem(str(path), "file or folder not found")
    if path.is_dir():
        series = read_dicom_folder(path, modalities=modalities)
        return InputImage(path, series.volume, series)
    name = path.name.lower()
    if name.endswith(_NIFTI):
        return InputImage(path, read_nifti(path))
    if name.endswith(".png"):
        return InputImage(path, read_png(path))
    if path.suffix.lower() in _DICOM:
        series = read_dicom_series([path], modalities=modalities)
        return InputImage(path, series.volume, series)
    raise CaseProblem(
        str(path), "not an image predict reads (NIfTI .nii/.nii.gz, PNG, DICOM file or folder)"
    )


class Predictor:
    """Applies one exported model to images, one at a time."""

    def __init__(self, model: ExportedModel) -> None:
        self.model = model
        self.card = model.card
        self.plan = model.card.plan_settings()
        self.preprocess = model.card.preprocess_settings() if self.plan is None else None
        inference = model.card.inference
        self.inferer = SlidingWindowInferer(
            roi_size=inference.roi_size,
            sw_batch_size=inference.sw_batch_size,
            overlap=inference.overlap,
            mode=inference.mode,
        )

    def prepare(self, volume: ImageVolume, where: str) -> np.ndarray:
        """The model-ready (C, *spatial) image, as the study's sites prepared theirs."""
        if self.preprocess is not None:
            return prepare_image(volume.array, self.preprocess, where)
        if self.plan is None:
            raise CaseProblem(where, "the model's card has neither [preprocess] nor a plan")
        image, _ = apply_plan(
            volume.array,
            None,
            spacing=volume.spacing,
            affine=grid_affine(volume),
            plan=self.plan,
            channels=int(self.card.model.get("in_channels", 1)),
            where=where,
        )
        return image

    @torch.no_grad()
    def logits(self, image: np.ndarray) -> torch.Tensor:
        """The model's logits (1, K, ...) on a prepared (C, *spatial) image."""
        batch = normalize_images(torch.from_numpy(image)[None]).to(self.model.device)
        if self.card.task is Task.CLASSIFICATION:
            return self.model.forward(batch).float().cpu()
        result = self.inferer(batch, self.model.forward)
        return torch.as_tensor(result).float().cpu()

    def predict(self, image: InputImage) -> Prediction:
        """The mask or the scores of one input; CaseProblem when it does not fit."""
        where = str(image.path)
        volume = image.volume
        model_grid_shape(volume, self.card.spatial_dims, where)
        if not np.isfinite(volume.array).all():
            raise CaseProblem(where, "image has NaN or infinite values")
        logits = self.logits(self.prepare(volume, where))
        probabilities = torch.softmax(logits, dim=1)[0]
        if self.card.task is Task.CLASSIFICATION:
            return Prediction(image, scores=probabilities.numpy())
        restored = to_input_grid(
            probabilities, volume, preprocess=self.preprocess, plan=self.plan, where=where
        )
        mask = restored.argmax(dim=0).numpy().astype(np.uint8)
        return Prediction(image, mask=mask.reshape(volume.spatial_shape))
