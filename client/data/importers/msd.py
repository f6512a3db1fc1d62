"""Describe a Medical Segmentation Decathlon task (`dataset.json`, `imagesTr/`,
`labelsTr/`) as manifest cases.

`dataset.json`'s `training` list names each image and label; `modality` gives the number
of channels (4D images) and `labels` the label names. A listed file that is missing is
left out with `dataset.json` and the file named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consortia.client.data.cases import image_stem
from consortia.client.data.importers.draft import Draft, DraftCase, dataset_name, padded_size
from consortia.client.data.importers.nifti_folder import nifti_shape
from consortia.common.errors import ConfigError

__all__ = ["import_msd", "read_dataset_json"]


def read_dataset_json(path: Path) -> dict[str, Any]:
    """`dataset.json` as a dict; `ConfigError` naming the file when it is not JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable dataset.json: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: dataset.json must hold one JSON object")
    return data


def _labels(data: dict[str, Any], path: Path) -> dict[int, str] | None:
    raw = data.get("labels")
    if not isinstance(raw, dict):
        return None
    try:
        return {int(value): str(name) for value, name in raw.items()}
    except ValueError:
        raise ConfigError(f"{path}: labels: keys must be label values (0, 1, ...)") from None


def import_msd(source: Path) -> Draft:
    """The training cases listed in `source/dataset.json` (MSD layout)."""
    index = source / "dataset.json"
    data = read_dataset_json(index)
    training = data.get("training")
    if not isinstance(training, list) or not training:
        raise ConfigError(f"{index}: training: a list of {{image, label}} entries is needed")
    name = dataset_name(Path(str(data.get("name") or source.name)))
    modality = data.get("modality")
    channels = len(modality) if isinstance(modality, dict) and modality else 1
    draft = Draft("MSD dataset.json", source, name, spatial_size=(1, 1), channels=channels)
    draft.labels = _labels(data, index)
    shapes: list[tuple[int, ...]] = []
    seen: set[str] = set()
    for number, entry in enumerate(training):
        if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
            draft.problem(index, f"training[{number}]: needs image and label")
            continue
        image, label = source / str(entry["image"]), source / str(entry["label"])
        missing = [p for p in (image, label) if not p.is_file()]
        if missing:
            names = ", ".join(str(p.relative_to(source)) for p in missing)
            draft.problem(index, f"training[{number}] names missing file(s): {names}")
            continue
        identifier = image_stem(image.name)
        if identifier in seen:
            draft.problem(index, f"training[{number}]: duplicate case id {identifier!r}")
            continue
        shape = nifti_shape(image, draft)
        if shape is None:
            continue
        seen.add(identifier)
        shapes.append(shape)
        draft.cases.append(DraftCase(identifier, "nifti", image, "mask", label))
    draft.spatial_size = padded_size(shapes)
    return draft
