"""`consortia data init SRC`: tell which layout a source folder has and run its importer.

Layouts, tried in this order: nnU-Net v2 raw (`dataset.json` with `channel_names`), MSD
(`dataset.json` with `training`), BIDS (`dataset_description.json` or `sub-*` folders),
a NIfTI folder (`images/` and `labels/` or `masks/`), and a DICOM export (any folder
holding DICOM files at any depth). A source that is none of these is a `ConfigError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from consortia.client.data.importers.bids import import_bids
from consortia.client.data.importers.dicom_export import import_dicom_export, looks_like_dicom
from consortia.client.data.importers.draft import Draft
from consortia.client.data.importers.msd import import_msd, read_dataset_json
from consortia.client.data.importers.nifti_folder import LABEL_FOLDERS, import_nifti_folder
from consortia.client.data.importers.nnunet import import_nnunet
from consortia.common.errors import ConfigError

__all__ = ["LAYOUTS", "Layout", "detect_layout", "import_source"]

Layout = Literal["nnunet", "msd", "bids", "nifti", "dicom"]
LAYOUTS: tuple[Layout, ...] = ("nnunet", "msd", "bids", "nifti", "dicom")


def detect_layout(source: Path) -> Layout:
    """The layout of `source` (see the module docstring)."""
    if not source.is_dir():
        raise ConfigError(f"{source}: not a folder")
    index = source / "dataset.json"
    if index.is_file():
        data = read_dataset_json(index)
        if "channel_names" in data:
            return "nnunet"
        if "training" in data:
            return "msd"
        raise ConfigError(f"{index}: neither nnU-Net v2 (channel_names) nor MSD (training)")
    if (source / "dataset_description.json").is_file() or any(source.glob("sub-*")):
        return "bids"
    if (source / "images").is_dir() and any((source / n).is_dir() for n in LABEL_FOLDERS):
        return "nifti"
    if any(looks_like_dicom(p) for p in source.rglob("*") if p.is_file()):
        return "dicom"
    raise ConfigError(
        f"{source}: no known layout (DICOM files, images/ + labels/, MSD or nnU-Net "
        "dataset.json, BIDS sub-* folders)"
    )


def import_source(
    source: Path,
    *,
    layout: Layout | None = None,
    stack_dir: Path | None = None,
    hashed_ids: bool = False,
) -> Draft:
    """The draft manifest of `source`; multi-channel nnU-Net cases are stacked into
    `stack_dir` (default: `source`/../`<name>-channels`)."""
    source = source.resolve()
    chosen = layout or detect_layout(source)
    if chosen == "nnunet":
        return import_nnunet(source, stack_dir=stack_dir or source.parent / "channels")
    if chosen == "msd":
        return import_msd(source)
    if chosen == "bids":
        return import_bids(source)
    if chosen == "nifti":
        return import_nifti_folder(source)
    return import_dicom_export(source, hashed_ids=hashed_ids)
