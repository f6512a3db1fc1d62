"""A site's registered data set: a manifest (or a legacy MedMNIST npz) read as training
reads it, checked case by case, fingerprinted, and cached as preprocessed arrays.

Only cases that pass every check are used. A data set with identifying DICOM attributes
is refused until hospital IT registers a de-identified copy. Nothing here writes to the
data; the cache lives in its own folder (see `consortia.client.data.cache`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from consortia.client.data.cache import ArrayCache, FileHashCache
from consortia.client.data.cases import CaseSpec, case_files, expand_cases
from consortia.client.data.check import (
    CaseResult,
    CheckReport,
    failed_result,
    passed_result,
    phi_key,
)
from consortia.client.data.dicom.phi import guard_file
from consortia.client.data.formats.geometry import grid_affine
from consortia.client.data.formats.volume import CaseProblem
from consortia.client.data.manifest import (
    DatasetInfo,
    Manifest,
    ManifestFile,
    NpzSource,
    PreprocessSettings,
    SplitRule,
    load_manifest,
)
from consortia.client.data.preprocess import apply_plan
from consortia.client.data.reader import CaseData, CaseReader
from consortia.client.data.site_data import SiteArrays, load_npz_splits
from consortia.client.data.splits import SPLITS, patient_split, split_conflicts
from consortia.common.config.plan_settings import PlanSettings
from consortia.common.config.settings import Task
from consortia.common.errors import DataError

__all__ = ["PIPELINE_VERSION", "SiteDataset"]

logger = logging.getLogger("consortia.client.data.dataset")

# Bump when reading or preprocessing changes what the arrays hold: old cache entries die.
PIPELINE_VERSION = 1
_FINGERPRINT_TAG = b"consortia-dataset-v1\0"


@dataclass
class _Read:
    """One case after reading: its result, the DICOM patient and (when kept) its arrays."""

    case: CaseSpec
    patient: str | None
    arrays: tuple[np.ndarray, np.ndarray | int] | None
    result: CaseResult


@dataclass
class _Scan:
    """Every case read once: results for the report, arrays per split for training."""

    results: list[CaseResult]
    phi: Counter[str]
    arrays: dict[str, list[tuple[np.ndarray, np.ndarray | int]]] = field(default_factory=dict)


def _legacy_manifest(path: Path) -> ManifestFile:
    """A manifest equivalent to a legacy npz, for `check` (its `load` stays as before)."""
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        image_key = next((f"{s}_images" for s in SPLITS if f"{s}_images" in keys), None)
        if image_key is None:
            raise DataError(f"{path.name}: no train_images, val_images or test_images array")
        shape = archive[image_key].shape[1:]
    masks = any(f"{s}_masks" in keys for s in SPLITS)
    channels = shape[-1] if len(shape) == 3 and shape[-1] in (3, 4) else 1
    spatial = shape[:-1] if channels > 1 else shape
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem)
    name = (name if name[:1].isalnum() else f"dataset-{name}")[:64]
    manifest = Manifest(
        dataset=DatasetInfo(name=name, task=Task.SEGMENTATION if masks else Task.CLASSIFICATION),
        preprocess=PreprocessSettings(spatial_size=tuple(spatial), channels=channels),
        npz=(NpzSource(file=Path(path.name)),),
    )
    return ManifestFile(path=path, data=b"", manifest=manifest)


def _phi_keys(case: CaseSpec) -> list[str]:
    """PHI findings (as report keys) over the case's DICOM files."""
    paths: list[Path] = []
    image = case.image.path
    if case.image.kind == "dicom" and image.is_dir():
        paths.extend(sorted(p for p in image.rglob("*") if p.is_file()))
    elif case.image.kind == "dicom":
        paths.append(image)
    if case.label is not None and case.label.kind == "seg" and case.label.path is not None:
        paths.append(case.label.path)
    keys: list[str] = []
    for path in paths:
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            keys.extend(phi_key(finding) for finding in guard_file(path))
        except CaseProblem as problem:  # not DICOM: reported when the case is read
            logger.debug("PHI guard skipped %s: %s", path, problem.reason)
    return keys


def _resolve_splits(read: list[_Read], rule: SplitRule) -> list[_Read]:
    """Give rule-split cases the split of their DICOM patient; leave out every case of
    a patient whose explicit splits disagree."""
    for item in read:
        if item.result.ok and item.result.split is None:
            patient = item.case.patient or item.patient or item.case.id
            item.result = replace(item.result, split=patient_split(patient, rule))
    conflicts = split_conflicts(
        (known, str(item.result.split))
        for item in read
        if item.result.ok and (known := item.case.patient or item.patient) is not None
    )
    for item in read:
        splits = conflicts.get(item.case.patient or item.patient or "")
        if splits and item.result.ok:
            reason = (
                f"the patient of this case has cases in splits {', '.join(splits)}; "
                "all cases of a patient must be in one split"
            )
            path = str(item.case.image.path)
            item.result = failed_result(item.case.id, item.result.split, path, reason)
    return read


def _split_arrays(
    scan: _Scan, task: Task, size: PreprocessSettings, plan: PlanSettings | None
) -> dict[str, SiteArrays]:
    """The arrays a scan kept, stacked as one SiteArrays per split (empty ones included)."""
    if plan is not None:
        size = size.model_copy(update={"spatial_size": plan.spatial_size})
    arrays: dict[str, SiteArrays] = {}
    for split in SPLITS:
        items = scan.arrays.get(split, [])
        images = (
            np.stack([image for image, _ in items])
            if items
            else np.zeros((0, size.channels, *size.spatial_size), np.float32)
        )
        if task is Task.SEGMENTATION:
            targets = (
                np.stack([np.asarray(t) for _, t in items])
                if items
                else np.zeros((0, *size.spatial_size), np.int64)
            )
        else:
            targets = np.asarray([int(t) for _, t in items], dtype=np.int64)
        arrays[split] = SiteArrays(images.astype(np.float32), targets.astype(np.int64), plan)
    return arrays


def _planned(
    data: CaseData, case: CaseSpec, plan: PlanSettings | None, manifest: Manifest
) -> CaseData:
    """The case preprocessed by the run's plan (as read when there is none)."""
    if plan is None:
        return data
    target = data.target if isinstance(data.target, np.ndarray) else None
    image, label = apply_plan(
        data.image,
        target,
        spacing=data.volume.spacing,
        affine=grid_affine(data.volume),
        plan=plan,
        channels=manifest.preprocess.channels,
        where=str(case.image.path),
    )
    return replace(data, image=image, target=data.target if label is None else label)


class SiteDataset:
    """One data set of a site; open it with `SiteDataset.open`."""

    def __init__(
        self,
        path: Path,
        manifest: ManifestFile,
        cases: list[CaseSpec],
        *,
        legacy: bool,
        cache_dir: Path | None,
        plan: PlanSettings | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.cases = cases
        self.legacy = legacy
        self.cache_dir = cache_dir
        # The approved run's `[run.plan]`: how cases are preprocessed (None: the manifest's
        # `[preprocess]` alone, as before plans).
        self.plan = plan
        info = manifest.manifest.dataset
        self.name: str = info.name
        self.task: Task | None = None if legacy else info.task
        self._hashes = FileHashCache(cache_dir)
        # Number of cases read from the source files by this object (not from the cache).
        self.cases_read = 0

    @classmethod
    def open(
        cls, path: Path, *, cache_dir: Path | None = None, plan: PlanSettings | None = None
    ) -> SiteDataset:
        """Open a manifest (.toml) or a legacy MedMNIST npz, to be preprocessed by `plan`
        when given (a legacy npz is not: it has no geometry). `ConfigError` for a bad
        manifest, `DataError` for an unreadable npz; cases are only read later."""
        path = Path(path).resolve()
        if path.suffix.lower() == ".npz":
            if not path.is_file():
                raise DataError(f"{path}: data set not found")
            try:
                mf = _legacy_manifest(path)
            except (OSError, ValueError, EOFError) as err:
                raise DataError(f"{path.name}: not a readable npz file: {err}") from None
            return cls(path, mf, expand_cases(mf), legacy=True, cache_dir=cache_dir)
        mf = load_manifest(path)
        return cls(path, mf, expand_cases(mf), legacy=False, cache_dir=cache_dir, plan=plan)

    # --- identity ---------------------------------------------------------------------

    @cached_property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the manifest bytes and every referenced file's bytes, with
        paths relative to the manifest (a legacy npz: of its bytes alone)."""
        if self.legacy:
            value = self._hashes.digest(self.path)
            if value is None:
                raise DataError(f"{self.path}: cannot be read")
            self._hashes.save()
            return value
        digest = hashlib.sha256(_FINGERPRINT_TAG + self.manifest.data)
        files = {f for case in self.cases for f in case_files(case)}
        root = self.manifest.root
        for path in sorted(files, key=lambda p: Path(os.path.relpath(p, root)).as_posix()):
            relative = Path(os.path.relpath(path, root)).as_posix()
            digest.update(f"{relative}\0{self._hashes.digest(path) or 'missing'}\n".encode())
        self._hashes.save()
        return digest.hexdigest()

    def _cache_key(self, task: Task) -> str:
        settings: dict[str, Any] = {
            "pipeline": PIPELINE_VERSION,
            "task": task.value,
            "preprocess": self.manifest.manifest.preprocess.model_dump(mode="json"),
        }
        if self.plan is not None:
            settings["plan"] = self.plan.model_dump(mode="json")
        return ArrayCache.entry_key(self.fingerprint, settings)

    def _array_cache(self) -> ArrayCache | None:
        if self.cache_dir is None:
            return None
        dataset_id = hashlib.sha256(str(self.path).encode()).hexdigest()[:16]
        return ArrayCache(self.cache_dir, dataset_id)

    # --- reading ------------------------------------------------------------------------

    def _reader(self, task: Task) -> CaseReader:
        manifest = self.manifest.manifest
        info = manifest.dataset
        return CaseReader(
            task,
            None if self.plan is not None else manifest.preprocess,
            simulation=manifest.simulation,
            modalities=info.modalities,
            label_names=info.labels,
        )

    def _scan(self, task: Task, *, keep: bool, on_case: Callable[[int, int], None] | None) -> _Scan:
        reader = self._reader(task)
        scan = _Scan(results=[], phi=Counter())
        read: list[_Read] = []
        for done, case in enumerate(self.cases, start=1):
            keys = _phi_keys(case)
            scan.phi.update(keys)
            item = _Read(case, None, None, failed_result(case.id, case.split, "", ""))
            try:
                data = _planned(reader.read(case), case, self.plan, self.manifest.manifest)
            except CaseProblem as problem:
                logger.debug("case %s left out: %s: %s", case.id, problem.path, problem.reason)
                item.result = failed_result(case.id, case.split, problem.path, problem.reason)
            else:
                item.result = passed_result(case.id, case.split, data)
                item.patient = data.patient
                if keep and data.target is not None:  # only the model-ready arrays are kept
                    item.arrays = (data.image, data.target)
            self.cases_read += 1
            if keys:
                item.result = replace(item.result, phi_findings=len(keys))
            read.append(item)
            if on_case is not None:
                on_case(done, len(self.cases))
        for item in _resolve_splits(read, self.manifest.manifest.split):
            scan.results.append(item.result)
            if item.result.ok and item.arrays is not None:
                scan.arrays.setdefault(str(item.result.split), []).append(item.arrays)
        return scan

    # --- the API the node uses ------------------------------------------------------------

    def check(self, *, on_case: Callable[[int, int], None] | None = None) -> CheckReport:
        """Read every case as training would and report. With a cache folder (and no
        identifiers found) the preprocessed arrays are cached too, for the first round."""
        task = self.manifest.manifest.dataset.task
        keep = self.cache_dir is not None and not self.legacy
        scan = self._scan(task, keep=keep, on_case=on_case)
        if keep and not scan.phi:
            self._store(task, *self._stack(scan, task))
        return CheckReport.build(
            dataset=self.name,
            source=str(self.path),
            task=task.value,
            fingerprint=self.fingerprint,
            results=scan.results,
            phi=scan.phi,
            label_names=self.manifest.manifest.dataset.labels,
        )

    def _check_task(self, task: Task, splits: Sequence[str]) -> None:
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s): {sorted(unknown)}")
        if self.task is not None and task is not self.task:
            raise DataError(
                f"{self.path}: the data set is for {self.task.value}, the run asks for {task.value}"
            )

    def _build(self, task: Task) -> dict[str, SiteArrays]:
        scan = self._scan(task, keep=True, on_case=None)
        if scan.phi:
            files = sum(1 for r in scan.results if r.phi_findings)
            raise DataError(
                f"{self.path}: {files} case(s) hold identifying DICOM attributes "
                f"({sum(scan.phi.values())} finding(s)); the node does not train on them. "
                "Run `consortia data deidentify SRC DST` and register the de-identified copy"
            )
        arrays, index = self._stack(scan, task)
        self._store(task, arrays, index)
        return arrays

    def _store(self, task: Task, arrays: dict[str, SiteArrays], index: dict[str, Any]) -> None:
        cache = self._array_cache()
        if cache is None:
            return
        try:
            cache.write(self._cache_key(task), arrays, index)
        except OSError as err:
            logger.warning("cannot write the data cache under %s: %s", cache.folder, err)

    def _stack(self, scan: _Scan, task: Task) -> tuple[dict[str, SiteArrays], dict[str, Any]]:
        """The passing cases of a scan as one SiteArrays per split, and the cache index."""
        arrays = _split_arrays(scan, task, self.manifest.manifest.preprocess, self.plan)
        failed = sum(1 for r in scan.results if not r.ok)
        if failed:
            logger.warning(
                "%s: %d of %d case(s) left out (see `consortia data check`)",
                self.name,
                failed,
                len(scan.results),
            )
        index = {
            "fingerprint": self.fingerprint,
            "counts": {split: len(data) for split, data in arrays.items()},
            "failed": failed,
        }
        return arrays, index

    def _arrays(self, task: Task, splits: Sequence[str]) -> dict[str, SiteArrays]:
        cache = self._array_cache()
        key = self._cache_key(task)
        if cache is not None:
            index = cache.read_index(key)
            if index is not None:
                found = {
                    s: cache.read_split(key, s, int(index["counts"].get(s, 0))) for s in splits
                }
                if all(value is not None for value in found.values()):
                    return {s: v for s, v in found.items() if v is not None}
        return self._build(task)

    def load(self, task: Task, splits: Sequence[str]) -> SiteArrays:
        """The passing cases of `splits`, preprocessed, from the cache when it is valid."""
        self._check_task(task, splits)
        if self.legacy:
            return load_npz_splits(self.path, task, splits)
        arrays = self._arrays(task, splits)
        chosen = [arrays[s] for s in splits if s in arrays and len(arrays[s])]
        if not chosen:
            raise DataError(f"{self.path}: no usable case in split(s) {', '.join(splits)}")
        return SiteArrays(
            np.concatenate([a.images for a in chosen]),
            np.concatenate([a.targets for a in chosen]),
            self.plan,
        )

    def count(self, task: Task, splits: Sequence[str]) -> int:
        """How many usable cases `splits` hold (from the cache index when it is valid)."""
        self._check_task(task, splits)
        if self.legacy:
            return len(load_npz_splits(self.path, task, splits))
        cache = self._array_cache()
        if cache is not None:
            index = cache.read_index(self._cache_key(task))
            if index is not None:
                return sum(int(index["counts"].get(s, 0)) for s in splits)
        arrays = self._arrays(task, splits)
        return sum(len(arrays[s]) for s in splits if s in arrays)
