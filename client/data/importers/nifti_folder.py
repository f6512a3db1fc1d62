"""Describe a folder of NIfTI images and masks as manifest cases: `images/` and `labels/`
(or `masks/`) hold files of the same relative path, at any depth.

The case id is the image's path under `images/` without its suffix. Shapes come from the
NIfTI headers (no voxels are read). An image without a mask, or a mask without an image,
is left out with its file named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib

from consortia.client.data.cases import image_stem
from consortia.client.data.importers.draft import (
    Draft,
    DraftCase,
    case_id,
    dataset_name,
    padded_size,
)
from consortia.common.errors import ConfigError

__all__ = ["LABEL_FOLDERS", "import_nifti_folder", "is_nifti", "nifti_shape"]

LABEL_FOLDERS = ("labels", "masks")


def is_nifti(path: Path) -> bool:
    """Whether a file name ends in .nii or .nii.gz."""
    return path.name.lower().endswith((".nii", ".nii.gz"))


def nifti_shape(path: Path, draft: Draft) -> tuple[int, ...] | None:
    """The spatial shape of a NIfTI file from its header (channels dropped), None (and a
    problem recorded) when the header cannot be read."""
    try:
        image: Any = nib.load(path)
        shape = tuple(int(n) for n in image.shape)
    except Exception:  # nibabel raises many types on damaged or foreign files
        draft.problem(path, "not a readable NIfTI file")
        return None
    spatial = shape[:3] if len(shape) > 3 else shape
    return tuple(reversed(spatial))  # (D, H, W) as the reader returns it


def _nifti_files(folder: Path) -> dict[Path, Path]:
    return {
        p.relative_to(folder): p for p in sorted(folder.rglob("*")) if p.is_file() and is_nifti(p)
    }


def import_nifti_folder(source: Path) -> Draft:
    """The cases of `source/images` paired with `source/labels` (or `source/masks`)."""
    images_dir = source / "images"
    labels_dir = next((source / n for n in LABEL_FOLDERS if (source / n).is_dir()), None)
    if not images_dir.is_dir() or labels_dir is None:
        raise ConfigError(f"{source}: a NIfTI folder needs images/ and labels/ (or masks/)")
    draft = Draft("NIfTI folder", source, dataset_name(source), spatial_size=(1, 1))
    images, labels = _nifti_files(images_dir), _nifti_files(labels_dir)
    shapes: list[tuple[int, ...]] = []
    seen: dict[str, Path] = {}
    for relative, image in images.items():
        label = labels.pop(relative, None)
        if label is None:
            draft.problem(image, f"no mask of the same name under {labels_dir.name}/")
            continue
        identifier = case_id(relative.parent / image_stem(relative.name))
        if identifier in seen:
            draft.problem(image, f"duplicate case id {identifier!r} (also {seen[identifier]})")
            continue
        shape = nifti_shape(image, draft)
        if shape is None:
            continue
        seen[identifier] = image
        shapes.append(shape)
        draft.cases.append(DraftCase(identifier, "nifti", image, "mask", label))
    for label in labels.values():
        draft.problem(label, "a mask without an image of the same name under images/")
    draft.spatial_size = padded_size(shapes)
    return draft
