"""A manifest drafted by an importer: the cases found, what was left out and why, and the
commented TOML file `consortia data init` writes from it.

The written file is the manifest model's own format (`consortia.client.data.manifest`):
before it replaces anything it is read back with `load_manifest` and expanded with
`expand_cases`, so a manifest that `consortia data check` would refuse is never written.
Paths are relative to the manifest (it is a site-local file); DICOM cases carry no
patient id, the reader takes it from PatientID when the case is read.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from consortia.client.data.cases import expand_cases
from consortia.client.data.manifest import load_manifest
from consortia.common.errors import ConfigError
from consortia.common.files import write_text_atomic
from consortia.common.logs import utc_now

__all__ = [
    "Draft",
    "DraftCase",
    "ImportProblem",
    "case_id",
    "dataset_name",
    "manifest_text",
    "padded_size",
    "write_manifest",
]

ImageKind = Literal["dicom", "nifti"]
LabelKind = Literal["mask", "seg"]
_ID_CHARS = re.compile(r"[^A-Za-z0-9_.\-/]+")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ImportProblem:
    """A file or folder an importer could not describe, and why (site-local)."""

    path: str
    reason: str


@dataclass(frozen=True)
class DraftCase:
    """One case found: its id, image, label, and the patient where the layout names one."""

    id: str
    image_kind: ImageKind
    image: Path
    label_kind: LabelKind | None = None
    label: Path | None = None
    patient: str | None = None
    split: str | None = None
    note: str = ""


@dataclass
class Draft:
    """What an importer found under a source folder."""

    layout: str
    source: Path
    name: str
    spatial_size: tuple[int, ...]
    channels: int = 1
    labels: dict[int, str] | None = None
    modalities: tuple[str, ...] | None = None
    cases: list[DraftCase] = field(default_factory=list)
    problems: list[ImportProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, path: Path | str, reason: str) -> None:
        """Record a file or folder left out."""
        self.problems.append(ImportProblem(str(path), reason))


def case_id(relative: Path | str) -> str:
    """A stable case id from a path relative to the source (folders kept as '/')."""
    text = Path(relative).as_posix().strip("/") or "case"
    return _ID_CHARS.sub("_", text)[:200]


def padded_size(shapes: list[tuple[int, ...]], multiple: int = 16) -> tuple[int, ...]:
    """The largest extent per axis over `shapes`, rounded up to `multiple` (a U-Net's
    strides divide it), so that a centred pad/crop cuts no image."""
    if not shapes:
        return (1, 1)
    dims = max(len(s) for s in shapes)
    same = [s for s in shapes if len(s) == dims]
    return tuple(-(-max(s[axis] for s in same) // multiple) * multiple for axis in range(dims))


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _path(path: Path, base: Path) -> str:
    return _string(Path(os.path.relpath(path, base)).as_posix())


def _header(draft: Draft, out: Path) -> list[str]:
    lines = [
        "# Consortia data set manifest, written by `consortia data init`",
        f"# on {utc_now()} from a {draft.layout} layout under {_path(draft.source, out.parent)}.",
        "# Check it with `consortia data check` on this file; edit it freely (docs/data.md).",
        "# It stays at the site: it names local paths, which never leave the node.",
        "",
        "[dataset]",
        f"name = {_string(draft.name)}",
        'task = "segmentation"',
    ]
    if draft.modalities:
        lines.append(f"modalities = [{', '.join(_string(m) for m in draft.modalities)}]")
    if draft.labels:
        lines.append("# label value = name (0 is background); from the label files found")
        pairs = ", ".join(f"{value} = {_string(n)}" for value, n in sorted(draft.labels.items()))
        lines.append(f"labels = {{ {pairs} }}")
    lines += [
        "",
        "[preprocess]",
        "# every case is padded (or cropped) to this size; the largest image found fits.",
        "# A smaller size trains faster: `data check` says if a crop would cut a label.",
        f"spatial_size = [{', '.join(str(n) for n in draft.spatial_size)}]",
        f"channels = {draft.channels}",
        "",
        "[split]",
        "# all cases of one patient land in one split (DICOM: PatientID, read at check)",
        'rule = "patient-hash"',
    ]
    return lines


def _case_lines(case: DraftCase, base: Path) -> list[str]:
    lines = ["", "[[case]]"]
    if case.note:
        lines.append(f"# {case.note}")
    lines.append(f"id = {_string(case.id)}")
    if case.patient is not None:
        lines.append(f"patient = {_string(case.patient)}")
    if case.split is not None:
        lines.append(f"split = {_string(case.split)}")
    lines.append(f"image = {{ {case.image_kind} = {_path(case.image, base)} }}")
    if case.label is not None and case.label_kind is not None:
        lines.append(f"label = {{ {case.label_kind} = {_path(case.label, base)} }}")
    return lines


def manifest_text(draft: Draft, out: Path) -> str:
    """The commented TOML manifest of `draft`, for a file at `out`."""
    if not draft.cases:
        raise ConfigError(f"{draft.source}: no cases found in the {draft.layout} layout")
    lines = _header(draft, out)
    for case in draft.cases:
        lines += _case_lines(case, out.parent)
    if draft.notes or draft.problems:
        lines += ["", "# --- notes from `consortia data init` ---"]
        lines += [f"# {note}" for note in draft.notes]
        lines += [f"# left out: {p.path}: {p.reason}" for p in draft.problems]
    return "\n".join(lines) + "\n"


def write_manifest(draft: Draft, out: Path, *, overwrite: bool = False) -> Path:
    """Write the manifest atomically after checking that it reads back as a manifest;
    `ConfigError` (naming the file) when it would not, or `out` exists."""
    out = out.resolve()
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: exists; pass --force to replace it")
    text = manifest_text(draft, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    trial = out.with_name(f".{out.name}.init")
    trial.write_text(text, encoding="utf-8")
    try:
        expand_cases(load_manifest(trial))
    except ConfigError as err:
        raise ConfigError(str(err).replace(str(trial), str(out))) from None
    finally:
        trial.unlink(missing_ok=True)
    write_text_atomic(out, text)
    return out


def dataset_name(source: Path) -> str:
    """A data set name (manifest pattern) from the source folder's name."""
    name = _NAME_CHARS.sub("-", source.name).strip("-.") or "dataset"
    return (name if name[0].isalnum() else f"d{name}")[:64]
