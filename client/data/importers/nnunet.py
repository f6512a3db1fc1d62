"""Describe an nnU-Net v2 raw data set (`dataset.json` with `channel_names`,
`imagesTr/CASE_XXXX.nii.gz` per channel, `labelsTr/CASE.nii.gz`) as manifest cases.

A case with one channel points at its `_0000` file. A case with several channels is
stacked into one 4D NIfTI (channels last, the reader's convention) in `stack_dir`,
because a manifest image is one file today; the stacked copy is site-local and named in
the manifest. A case missing a channel file or its label is left out with the file
named; a channel file of another shape or grid is left out too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from consortia.client.data.importers.draft import Draft, DraftCase, dataset_name, padded_size
from consortia.client.data.importers.msd import read_dataset_json
from consortia.client.data.importers.nifti_folder import nifti_shape
from consortia.common.errors import ConfigError

__all__ = ["import_nnunet"]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _channel_count(data: dict[str, object], index: Path) -> int:
    channels = data.get("channel_names") or data.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise ConfigError(f"{index}: channel_names: a mapping of channel numbers is needed")
    return len(channels)


def _labels(data: dict[str, object], index: Path) -> dict[int, str] | None:
    raw = data.get("labels")
    if not isinstance(raw, dict):
        return None
    try:  # nnU-Net v2 maps names to values (regions as lists are not supported)
        return {int(value): str(name) for name, value in raw.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{index}: labels: name = value pairs are needed") from None


def _cases(images: Path, ending: str) -> dict[str, dict[int, Path]]:
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(images.glob(f"*{ending}")):
        match = _CHANNEL.match(path.name[: -len(ending)])
        if match:
            cases.setdefault(match["case"], {})[int(match["channel"])] = path
    return cases


def _stack(files: list[Path], target: Path, draft: Draft) -> Path | None:
    try:
        loaded: list[Any] = [nib.load(p) for p in files]
        arrays = [np.asarray(image.dataobj) for image in loaded]
    except Exception:  # nibabel raises many types on damaged files
        draft.problem(files[0].parent, f"cannot read the channel files of {target.name}")
        return None
    for path, image, array in zip(files, loaded, arrays, strict=True):
        if array.shape != arrays[0].shape or not np.allclose(image.affine, loaded[0].affine):
            draft.problem(path, "channel of another shape or grid than channel 0000")
            return None
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.stack(arrays, axis=-1), loaded[0].affine), target)
    return target


def import_nnunet(source: Path, *, stack_dir: Path) -> Draft:
    """The training cases of an nnU-Net v2 raw data set at `source`."""
    index = source / "dataset.json"
    data = read_dataset_json(index)
    channels = _channel_count(data, index)
    ending = str(data.get("file_ending") or ".nii.gz")
    name = dataset_name(Path(str(data.get("name") or source.name)))
    draft = Draft("nnU-Net v2 raw", source, name, spatial_size=(1, 1), channels=channels)
    draft.labels = _labels(data, index)
    shapes: list[tuple[int, ...]] = []
    for case, files in _cases(source / "imagesTr", ending).items():
        missing = [f"{case}_{c:04d}{ending}" for c in range(channels) if c not in files]
        label = source / "labelsTr" / f"{case}{ending}"
        if missing:
            draft.problem(source / "imagesTr", f"case {case}: missing channel file(s) {missing}")
            continue
        if not label.is_file():
            draft.problem(label, f"case {case}: label file missing")
            continue
        ordered = [files[c] for c in range(channels)]
        image = ordered[0]
        if channels > 1:
            stacked = _stack(ordered, stack_dir / f"{case}.nii.gz", draft)
            if stacked is None:
                continue
            image = stacked
        shape = nifti_shape(ordered[0], draft)
        if shape is None:
            continue
        shapes.append(shape)
        note = f"{channels} channels stacked from imagesTr" if channels > 1 else ""
        draft.cases.append(DraftCase(case, "nifti", image, "mask", label, note=note))
    draft.spatial_size = padded_size(shapes)
    return draft
