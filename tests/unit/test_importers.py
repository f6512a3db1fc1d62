"""`consortia data init`'s importers: each layout round-trips into `data check` with the
expected cases and labels; bad input is left out with its file named; `data check` names
every broken file of a series; RTSTRUCT labels are read on the image grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from consortia.client.data.dataset import SiteDataset
from consortia.client.data.dicom.labels import read_seg_label
from consortia.client.data.dicom.series import read_dicom_folder, read_dicom_series
from consortia.client.data.formats.volume import CaseProblem
from consortia.client.data.importers.draft import write_manifest
from consortia.client.data.importers.scanner import import_source
from consortia.common.errors import ConfigError
from tests.support.dicom_export import write_pacs_export, write_rtstruct
from tests.support.dicom_factory import declare_transfer_syntax, truncate_file, write_series

SHAPE = (4, 6, 5)  # (D, H, W)


def _nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def _image(seed: int, channels: int = 0) -> np.ndarray:
    shape = SHAPE[::-1] + ((channels,) if channels else ())
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _label(value: int = 1) -> np.ndarray:
    label = np.zeros(SHAPE[::-1], np.uint8)
    label[1:3, 1:4, 1:3] = value
    return label


def _round_trip(source: Path, tmp_path: Path) -> tuple[int, set[int], list[str]]:
    draft = import_source(source, stack_dir=tmp_path / "stacked")
    out = write_manifest(draft, tmp_path / "out" / "manifest.toml")
    report = SiteDataset.open(out).check()
    labels = {v for case in report.cases if case.ok for v in case.labels}
    problems = [f"{p.path}: {p.reason}" for p in draft.problems]
    return sum(case.ok for case in report.cases), labels, problems


def test_dicom_export_pairs_seg_and_rtstruct(tmp_path: Path) -> None:
    export = write_pacs_export(tmp_path / "export", patients=2)
    draft = import_source(export.root)
    assert [c.id for c in draft.cases] == [
        "PAT-001/STUDY1/CT",
        "PAT-001/STUDY1/MR",
        "PAT-002/STUDY1/CT",
        "PAT-002/STUDY1/MR",
    ]
    assert draft.labels == {0: "background", 1: "liver", 2: "lesion"}
    ok, labels, problems = _round_trip(export.root, tmp_path)
    assert (ok, labels, problems) == (4, {0, 1, 2}, [])


def test_rtstruct_is_read_on_the_image_grid_and_outside_contours_fail(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", n_slices=4, rows=12, columns=10)
    good = write_rtstruct(tmp_path / "rt.dcm", series, {3: ("gtv", (1, 2, 2, 5, 1, 4))})
    label = read_seg_label(good, read_dicom_folder(series.folder))
    expected = np.zeros((4, 12, 10), np.int64)
    expected[1:3, 2:6, 1:5] = 3
    assert np.array_equal(label, expected)
    bad = write_rtstruct(tmp_path / "bad.dcm", series, {1: ("x", (0, 0, 0, 1, 0, 1))}, outside=True)
    with pytest.raises(CaseProblem, match="outside the image") as err:
        read_seg_label(bad, read_dicom_folder(series.folder))
    assert err.value.path == str(bad)


def test_dicom_bad_input_is_left_out_with_the_file_named(tmp_path: Path) -> None:
    export = write_pacs_export(tmp_path / "export", patients=1)
    mixed = tmp_path / "export" / "PAT-001" / "STUDY1" / "MIXED"
    write_series(mixed, n_slices=2, rows=12, columns=10)
    write_series(mixed, n_slices=2, rows=12, columns=10, seed=3, file_names=["a.dcm", "b.dcm"])
    other = write_series(tmp_path / "elsewhere", n_slices=2, rows=12, columns=10)
    orphan = write_rtstruct(export.root / "orphan.dcm", other, {1: ("x", (0, 0, 1, 2, 1, 2))})
    (export.root / "notes.txt").write_text("not dicom")
    draft = import_source(export.root)
    reasons = {Path(p.path).name: p.reason for p in draft.problems}
    assert "mixed series" in reasons["MIXED"]
    assert "references no series" in reasons[orphan.name]
    assert "not a readable DICOM" in reasons["notes.txt"]
    assert len(draft.cases) == 2  # the rest is kept


def test_nifti_folder_msd_nnunet_and_bids_round_trip(tmp_path: Path) -> None:
    nifti = tmp_path / "nifti"
    for name in ("a", "b"):
        _nifti(nifti / "images" / f"{name}.nii.gz", _image(1))
        _nifti(nifti / "labels" / f"{name}.nii.gz", _label())
    _nifti(nifti / "images" / "lonely.nii.gz", _image(2))
    ok, labels, problems = _round_trip(nifti, tmp_path / "n")
    assert (ok, labels) == (2, {0, 1}) and "lonely.nii.gz" in problems[0]

    msd = tmp_path / "msd"
    training = []
    for name in ("c1", "c2", "gone"):
        if name != "gone":
            _nifti(msd / "imagesTr" / f"{name}.nii.gz", _image(3, channels=2))
            _nifti(msd / "labelsTr" / f"{name}.nii.gz", _label(2))
        training.append(
            {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}
        )
    index = {"name": "T", "modality": {"0": "T1", "1": "T2"}, "labels": {"0": "bg", "2": "x"}}
    (msd / "dataset.json").write_text(json.dumps(index | {"training": training}))
    ok, labels, problems = _round_trip(msd, tmp_path / "m")
    assert (ok, labels) == (2, {0, 2})
    assert "dataset.json" in problems[0] and "gone.nii.gz" in problems[0]

    nnunet = tmp_path / "nnunet"
    for case in ("case_0001", "case_0002", "case_0003"):
        for channel in (0, 1):
            if not (case == "case_0003" and channel == 1):
                _nifti(nnunet / "imagesTr" / f"{case}_{channel:04d}.nii.gz", _image(channel))
        _nifti(nnunet / "labelsTr" / f"{case}.nii.gz", _label())
    index = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1}}
    (nnunet / "dataset.json").write_text(json.dumps(index | {"file_ending": ".nii.gz"}))
    ok, labels, problems = _round_trip(nnunet, tmp_path / "u")
    assert (ok, labels) == (2, {0, 1})
    assert "case_0003" in problems[0] and "case_0003_0001.nii.gz" in problems[0]

    bids = tmp_path / "bids"
    for subject, sessions in (("sub-01", ("ses-1", "ses-2")), ("sub-02", ())):
        for session in sessions or ("",):
            stem = "_".join(p for p in (subject, session, "T1w") if p)
            _nifti(bids / subject / session / "anat" / f"{stem}.nii.gz", _image(4))
            derivative = bids / "derivatives" / "manual" / subject / session / "anat"
            _nifti(derivative / f"{stem.replace('_T1w', '')}_T1w_dseg.nii.gz", _label())
    draft = import_source(bids)
    assert {c.patient for c in draft.cases} == {"sub-01", "sub-02"}
    ok, labels, problems = _round_trip(bids, tmp_path / "b")
    assert (ok, labels, problems) == (3, {0, 1}, [])


def test_unknown_layout_and_existing_manifest_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no known layout"):
        import_source(tmp_path / "empty")
    export = write_pacs_export(tmp_path / "export", patients=1)
    out = tmp_path / "m.toml"
    out.write_text("keep")
    with pytest.raises(ConfigError, match="exists"):
        write_manifest(import_source(export.root), out)
    assert out.read_text() == "keep"


def test_check_names_every_broken_file_of_one_series(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", n_slices=5, rows=6, columns=5, omit=())
    files = sorted(series.files)
    truncate_file(files[0], 20)
    declare_transfer_syntax(files[1], "1.2.3.4.5.6.7.8")
    write_series(tmp_path / "other", n_slices=1, rows=6, columns=5, omit=["PixelData"])
    nopixels = next((tmp_path / "other").glob("*.dcm"))
    target = files[2].with_name("IMX.dcm")
    nopixels.rename(target)
    with pytest.raises(CaseProblem) as err:
        read_dicom_series([*files, target])
    reason = err.value.reason
    assert reason.startswith("3 broken files") or reason.startswith("4 broken files"), reason
    assert files[0].name in reason and "truncated" in reason
    assert files[1].name in reason and "transfer syntax" in reason
    assert "IMX.dcm" in reason and "no PixelData" in reason
