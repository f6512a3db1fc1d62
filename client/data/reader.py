"""Read one case the way training does: image, label, checks, preprocessing, shifts.

`CaseReader.read` returns the model-ready arrays and what `consortia data check` shows
about the case, or raises `CaseProblem` naming the file and the reason. It never writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from consortia.client.data.cases import CaseSpec, LabelSource
from consortia.client.data.dicom.labels import read_seg_label
from consortia.client.data.dicom.series import DicomSeries, read_dicom_folder, read_dicom_series
from consortia.client.data.formats.nifti import read_nifti, read_nifti_label
from consortia.client.data.formats.raster import NpzArchive, read_png, read_png_label
from consortia.client.data.formats.volume import CaseProblem, ImageVolume
from consortia.client.data.manifest import PreprocessSettings, SimulationSettings
from consortia.client.data.preprocess import prepare_image, prepare_label
from consortia.client.data.simulation import apply_acquisition_shift
from consortia.common.config.settings import Task

__all__ = ["CaseData", "CaseReader", "intensity_stats"]


@dataclass(frozen=True)
class CaseData:
    """A case read and prepared. `target` is a mask (*spatial) int64 for segmentation, a
    class number for classification, None without a task. `volume` is the image as read
    (before preprocessing), `patient` the DICOM PatientID where the image is DICOM."""

    image: np.ndarray
    target: np.ndarray | int | None
    label_values: tuple[int, ...]
    volume: ImageVolume
    patient: str | None
    files: int


def intensity_stats(array: np.ndarray) -> tuple[float, float, float, float]:
    """(min, max, mean, std) of an image, in float64."""
    values = array.astype(np.float64, copy=False)
    return float(values.min()), float(values.max()), float(values.mean()), float(values.std())


class CaseReader:
    """Reads the cases of one data set; npz archives are opened once per reader."""

    def __init__(
        self,
        task: Task | None,
        preprocess: PreprocessSettings | None,
        *,
        simulation: SimulationSettings | None = None,
        modalities: tuple[str, ...] | None = None,
        label_names: dict[int, str] | None = None,
    ) -> None:
        self.task = task
        self.preprocess = preprocess
        self.simulation = simulation
        self.modalities = modalities
        self.label_names = label_names
        self._archives: dict[Path, NpzArchive] = {}

    def _archive(self, path: Path) -> NpzArchive:
        if path not in self._archives:
            self._archives[path] = NpzArchive(path)
        return self._archives[path]

    def _image(self, case: CaseSpec) -> tuple[ImageVolume, DicomSeries | None, int]:
        source = case.image
        if source.kind == "npz":
            if source.key is None or source.index is None:
                raise CaseProblem(str(source.path), "npz image without key and index")
            return self._archive(source.path).image(source.key, source.index), None, 1
        if not source.path.exists():
            raise CaseProblem(str(source.path), "file or folder not found")
        if source.kind == "nifti":
            return read_nifti(source.path), None, 1
        if source.kind == "png":
            return read_png(source.path), None, 1
        if source.path.is_dir():
            series = read_dicom_folder(source.path, modalities=self.modalities)
        else:
            series = read_dicom_series([source.path], modalities=self.modalities)
        return series.volume, series, len(series.files)

    def _mask(
        self, label: LabelSource, volume: ImageVolume, series: DicomSeries | None
    ) -> np.ndarray:
        if label.kind == "npz":
            if label.path is None or label.key is None or label.index is None:
                raise CaseProblem("(manifest)", "npz label without file, key and index")
            mask = self._archive(label.path).label(label.key, label.index)
            where = f"{label.path} {label.key}[{label.index}]"
        else:
            if label.path is None:
                raise CaseProblem("(manifest)", "label without a file")
            where = str(label.path)
            if not label.path.is_file():
                raise CaseProblem(where, "label file not found")
            name = label.path.name.lower()
            if label.kind == "seg":
                if series is None:
                    raise CaseProblem(where, "a DICOM SEG label needs a DICOM image")
                mask = read_seg_label(label.path, series)
            elif name.endswith((".nii", ".nii.gz")):
                mask = read_nifti_label(label.path, volume)
            elif name.endswith(".png"):
                mask = read_png_label(label.path)
            else:
                raise CaseProblem(where, "a mask must be a NIfTI (.nii, .nii.gz) or PNG file")
        mask = np.asarray(mask)
        spatial = volume.spatial_shape
        if mask.ndim == len(spatial) + 1 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.ndim == len(spatial) - 1 and spatial[0] == 1:
            mask = mask[None]
        if tuple(mask.shape) != spatial:
            raise CaseProblem(
                where, f"label shape {tuple(mask.shape)} does not match image shape {spatial}"
            )
        return mask

    def _check_values(self, values: tuple[int, ...], where: str) -> None:
        if values and values[0] < 0:
            raise CaseProblem(where, f"negative label value {values[0]}")
        if self.label_names is not None:
            unknown = [v for v in values if v not in self.label_names]
            if unknown:
                raise CaseProblem(
                    where, f"label value(s) {unknown[:5]} not among the data set's labels"
                )

    def _label(
        self, case: CaseSpec, volume: ImageVolume, series: DicomSeries | None
    ) -> tuple[np.ndarray | int | None, tuple[int, ...]]:
        label = case.label
        if self.task is None:
            return None, ()
        where = str(label.path) if label is not None and label.path else f"case {case.id}"
        if label is None:
            raise CaseProblem(str(case.image.path), "the case has no label")
        if label.problem is not None:
            raise CaseProblem(where, label.problem)
        if self.task is Task.CLASSIFICATION:
            if label.kind != "class" or label.value is None:
                raise CaseProblem(where, "a classification data set needs a class label")
            self._check_values((label.value,), where)
            return label.value, (label.value,)
        if label.kind == "class":
            raise CaseProblem(where, "a segmentation data set needs a mask or SEG label")
        mask = self._mask(label, volume, series)
        values = tuple(int(v) for v in np.unique(mask))
        self._check_values(values, where)
        return mask, values

    def read(self, case: CaseSpec) -> CaseData:
        """The case's model-ready image and target; CaseProblem on any problem."""
        volume, series, files = self._image(case)
        target, values = self._label(case, volume, series)
        where = str(case.image.path)
        if not np.isfinite(volume.array).all():
            raise CaseProblem(where, "image has NaN or infinite values")
        image = volume.array
        if self.preprocess is not None:
            image = prepare_image(image, self.preprocess, where)
            if isinstance(target, np.ndarray):
                target = prepare_label(target, self.preprocess, where)
        if self.simulation is not None:
            image = apply_acquisition_shift(image, self.simulation, case.id)
        patient = series.patient_id if series is not None else None
        return CaseData(image, target, values, volume, patient, files)
