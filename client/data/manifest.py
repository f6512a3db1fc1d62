"""A site data manifest: one TOML file that describes one data set.

The format is documented for hospital IT in docs/data.md. Parsing validates the whole
file once, at the edge, into frozen pydantic models; unknown keys and wrong types are
`ConfigError`s that name the manifest file and the field. Paths inside a manifest are
relative to the manifest file. Expanding the file into cases is `consortia.client.data.cases`.
"""

from __future__ import annotations

import math
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consortia.common.config.settings import Task, format_validation_error
from consortia.common.errors import ConfigError

__all__ = [
    "CaseEntry",
    "ClassCsv",
    "DatasetInfo",
    "FilesSource",
    "ImageRef",
    "LabelRef",
    "Manifest",
    "ManifestFile",
    "NpzSource",
    "PreprocessSettings",
    "Selector",
    "SimulationSettings",
    "SplitRule",
    "load_manifest",
]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SplitName = Literal["train", "val", "test"]
_TEMPLATE_FIELDS = frozenset({"name", "stem"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, populate_by_name=True)


def _exactly_one(values: dict[str, object], what: str) -> str:
    given = [name for name, value in values.items() if value is not None]
    if len(given) != 1:
        choices = ", ".join(values)
        raise ValueError(f"{what} needs exactly one of {choices} (got {len(given)})")
    return given[0]


class DatasetInfo(_Strict):
    """`[dataset]`: what the data set is."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    task: Task
    description: str = ""
    modalities: tuple[str, ...] | None = None
    labels: dict[int, str] | None = None

    @model_validator(mode="after")
    def _labels_non_negative(self) -> DatasetInfo:
        if self.labels is not None and any(value < 0 for value in self.labels):
            raise ValueError("labels: class values must be >= 0")
        return self


class PreprocessSettings(_Strict):
    """`[preprocess]`: how every case is brought to the model's fixed input."""

    spatial_size: tuple[Annotated[int, Field(ge=1, le=2048)], ...]
    channels: Annotated[int, Field(ge=1, le=16)] = 1
    resize: Literal["pad-crop", "resize"] = "pad-crop"

    @model_validator(mode="after")
    def _two_or_three_dims(self) -> PreprocessSettings:
        if len(self.spatial_size) not in (2, 3):
            raise ValueError("spatial_size must have 2 (2D) or 3 (3D) entries")
        return self


class SplitRule(_Strict):
    """`[split]`: how cases without an explicit split are assigned one."""

    rule: Literal["explicit", "patient-hash"] = "explicit"
    salt: str = ""
    train: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7
    val: Annotated[float, Field(ge=0.0, le=1.0)] = 0.15
    test: Annotated[float, Field(ge=0.0, le=1.0)] = 0.15

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitRule:
        if not math.isclose(self.train + self.val + self.test, 1.0, abs_tol=1e-6):
            raise ValueError("train + val + test must add up to 1")
        return self


class SimulationSettings(_Strict):
    """`[simulation]`: a simulated acquisition shift applied at load time.

    Only for simulated sites built from public data; a real site has no such table.
    """

    gamma: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    contrast: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    noise: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    blur: Annotated[float, Field(ge=0.0, le=20.0)] = 0.0
    seed: int = 0


class Selector(_Strict):
    """A deterministic subset of a sorted case list: positions `start <= i < stop` with
    `i % modulo == remainder`."""

    start: Annotated[int, Field(ge=0)] = 0
    stop: Annotated[int, Field(ge=0)] | None = None
    modulo: Annotated[int, Field(ge=1)] = 1
    remainder: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _remainder_below_modulo(self) -> Selector:
        if self.remainder >= self.modulo:
            raise ValueError("remainder must be smaller than modulo")
        return self

    def keeps(self, position: int) -> bool:
        """Whether the case at `position` of the sorted list is selected."""
        if position < self.start or (self.stop is not None and position >= self.stop):
            return False
        return position % self.modulo == self.remainder


class ImageRef(_Strict):
    """A case's image: exactly one of `dicom`, `nifti`, `png`, `npz` (+ `key`, `index`)."""

    dicom: Path | None = None
    nifti: Path | None = None
    png: Path | None = None
    npz: Path | None = None
    key: str | None = None
    index: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImageRef:
        kind = _exactly_one(
            {"dicom": self.dicom, "nifti": self.nifti, "png": self.png, "npz": self.npz}, "image"
        )
        if (kind == "npz") != (self.key is not None and self.index is not None):
            raise ValueError("image: key and index go with npz, and npz needs both")
        return self


class LabelRef(_Strict):
    """A case's label: exactly one of `mask` (NIfTI or PNG), `seg` (DICOM SEG), `class`."""

    mask: Path | None = None
    seg: Path | None = None
    class_: int | None = Field(default=None, ge=0, alias="class")

    @model_validator(mode="after")
    def _one_source(self) -> LabelRef:
        _exactly_one({"mask": self.mask, "seg": self.seg, "class": self.class_}, "label")
        return self


class CaseEntry(_Strict):
    """`[[case]]`: one case given explicitly."""

    id: Annotated[str, Field(min_length=1, max_length=200)]
    patient: Annotated[str, Field(min_length=1)] | None = None
    image: ImageRef
    label: LabelRef | None = None
    split: SplitName | None = None


class ClassCsv(_Strict):
    """Class labels (and optionally patients and splits) from a CSV file with a header."""

    csv: Path
    id_column: str = "id"
    label_column: str = "label"
    patient_column: str | None = None
    split_column: str | None = None


class FilesSource(_Strict):
    """`[[files]]`: every image file or DICOM folder that a glob matches is a case.

    The case id is the matched name without its image suffix; label paths are templates
    with `{name}` (the matched file or folder name) and `{stem}` (the case id).
    """

    images: str
    masks: str | None = None
    segs: str | None = None
    classes: ClassCsv | None = None
    class_: int | None = Field(default=None, ge=0, alias="class")
    split: Literal["train", "val", "test", "rule"] | None = None
    select: Selector = Selector()
    class_fraction: dict[int, Annotated[float, Field(ge=0.0, le=1.0)]] | None = None

    @model_validator(mode="after")
    def _check(self) -> FilesSource:
        if not self.images.strip():
            raise ValueError("images: an empty glob")
        given = (self.masks, self.segs, self.classes, self.class_)
        if sum(value is not None for value in given) > 1:
            raise ValueError("give at most one of masks, segs, classes, class")
        for template in (self.masks, self.segs):
            if template is not None:
                _check_template(template)
        if self.class_fraction is not None and self.classes is None and self.class_ is None:
            raise ValueError("class_fraction needs class labels (classes or class)")
        if self.split is not None and self.classes is not None and self.classes.split_column:
            raise ValueError("give split or classes.split_column, not both")
        return self


class NpzSource(_Strict):
    """`[[npz]]`: cases of an npz archive in MedMNIST layout (`{split}_images`,
    `{split}_labels`, `{split}_masks`); each split's indices are selected separately."""

    file: Path
    splits: tuple[SplitName, ...] = ("train", "val", "test")
    split: Literal["train", "val", "test", "rule"] | None = None
    select: Selector = Selector()
    class_fraction: dict[int, Annotated[float, Field(ge=0.0, le=1.0)]] | None = None

    @model_validator(mode="after")
    def _check(self) -> NpzSource:
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ValueError("splits: give each of train, val, test at most once")
        return self


class Manifest(_Strict):
    """A whole manifest file."""

    dataset: DatasetInfo
    preprocess: PreprocessSettings
    split: SplitRule = SplitRule()
    simulation: SimulationSettings | None = None
    case: tuple[CaseEntry, ...] = ()
    files: tuple[FilesSource, ...] = ()
    npz: tuple[NpzSource, ...] = ()

    @model_validator(mode="after")
    def _has_cases(self) -> Manifest:
        if not (self.case or self.files or self.npz):
            raise ValueError("no cases: add [[case]], [[files]] or [[npz]] entries")
        seen: set[str] = set()
        for entry in self.case:
            if entry.id in seen:
                raise ValueError(f"case id {entry.id!r} is given twice")
            seen.add(entry.id)
        return self


@dataclass(frozen=True)
class ManifestFile:
    """A parsed manifest with where it lives and its exact bytes (for the fingerprint)."""

    path: Path
    data: bytes
    manifest: Manifest

    @property
    def root(self) -> Path:
        """The folder that relative paths in the manifest start from."""
        return self.path.parent


def _check_template(template: str) -> None:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"template {template!r}: {err}") from None
    unknown = fields - _TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"template {template!r}: unknown placeholder(s) {sorted(unknown)}; "
            "use {name} or {stem}"
        )


def load_manifest(path: Path) -> ManifestFile:
    """Read and validate a manifest; `ConfigError` names the file and the field."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the manifest: {err.strerror}") from None
    try:
        raw: dict[str, Any] = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err)) from None
    return ManifestFile(path=path, data=data, manifest=manifest)
