"""Describe a BIDS data set (`sub-*/[ses-*/]anat/*.nii.gz`, masks under
`derivatives/*/`) as manifest cases, with the subject as the patient.

Every case of one subject carries `patient = "sub-XX"`, so all its sessions land in one
split. A subject without sessions is allowed (BIDS allows it): its files sit directly
under `sub-XX/anat/` and the subject is still the patient. A subject that has both
`ses-*` folders and files outside them is ambiguous and left out with its folder named.
An image's mask is the derivatives file with the same subject, session and image suffix
ending in `_dseg`, `_mask` or `_label-*`; an image without one is left out.
"""

from __future__ import annotations

import re
from pathlib import Path

from consortia.client.data.cases import image_stem
from consortia.client.data.importers.draft import Draft, DraftCase, case_id, padded_size
from consortia.client.data.importers.nifti_folder import is_nifti, nifti_shape
from consortia.common.errors import ConfigError

__all__ = ["import_bids"]

_LABEL = re.compile(r"_(dseg|mask|label-[A-Za-z0-9]+(_mask|_dseg)?)$")


def _label_index(source: Path) -> dict[str, Path]:
    """Derivative masks by the image stem they belong to (their name without the label
    suffix, and without a `desc-*` entity)."""
    index: dict[str, Path] = {}
    derivatives = source / "derivatives"
    if not derivatives.is_dir():
        return index
    for path in sorted(derivatives.rglob("*")):
        stem = image_stem(path.name)
        if path.is_file() and is_nifti(path) and _LABEL.search(stem):
            base = re.sub(r"_desc-[A-Za-z0-9]+", "", _LABEL.sub("", stem))
            index.setdefault(base, path)
    return index


def _subject_images(subject: Path, draft: Draft) -> list[Path]:
    sessions = sorted(p for p in subject.iterdir() if p.is_dir() and p.name.startswith("ses-"))
    others = [p for p in subject.iterdir() if not p.name.startswith(("ses-", "."))]
    if sessions and others:
        draft.problem(subject, "has ses-* folders and data outside them; move it into a session")
        return []
    roots = sessions or [subject]
    return [p for root in roots for p in sorted((root / "anat").glob("*")) if is_nifti(p)]


def import_bids(source: Path) -> Draft:
    """The anatomical images of every subject with a derivative mask."""
    subjects = sorted(p for p in source.glob("sub-*") if p.is_dir())
    if not subjects:
        raise ConfigError(f"{source}: no sub-* folders (not a BIDS data set)")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.name).strip("-.") or "bids"
    draft = Draft("BIDS", source, name[:64], spatial_size=(1, 1))
    labels = _label_index(source)
    shapes: list[tuple[int, ...]] = []
    for subject in subjects:
        for image in _subject_images(subject, draft):
            stem = image_stem(image.name)
            label = labels.get(stem)
            if label is None:
                draft.problem(image, "no mask under derivatives/ (…_dseg or …_mask)")
                continue
            shape = nifti_shape(image, draft)
            if shape is None:
                continue
            shapes.append(shape)
            identifier = case_id(image.relative_to(source).parent / stem)
            draft.cases.append(
                DraftCase(identifier, "nifti", image, "mask", label, patient=subject.name)
            )
    draft.spatial_size = padded_size(shapes)
    return draft
