"""`SiteDataset.check` and the DICOM-folder check: every kind of bad input is reported with
its file and reason and left out, the rest passes, the summary adds up, nothing changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom.data
import pytest
from PIL import Image

from consortia.client.data.dataset import SiteDataset
from consortia.client.data.dicom.folder_check import check_dicom_folder
from consortia.common.config.settings import Task
from tests.support.dicom_factory import declare_transfer_syntax, write_seg, write_series


def _testdata(name: str) -> Path:
    path = pydicom.data.get_testdata_file(name)
    assert isinstance(path, str), name
    return Path(path)


def _tree_state(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _png(path: Path, value: int, shape: tuple[int, int] = (10, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


CLASSIFICATION = """
[dataset]
name = "mixed-2d"
task = "classification"
labels = { 0 = "normal", 1 = "finding" }

[preprocess]
spatial_size = [8, 8]

[[files]]
images = "png/*.png"
split = "train"
classes = { csv = "labels.csv" }

[[case]]
id = "from-npz"
split = "val"
image = { npz = "set.npz", key = "train_images", index = 1 }
label = { class = 1 }

[[case]]
id = "npz-out-of-range"
split = "val"
image = { npz = "set.npz", key = "train_images", index = 7 }
label = { class = 0 }

[[case]]
id = "missing-file"
split = "test"
image = { png = "absent.png" }
label = { class = 0 }

[[case]]
id = "unknown-class"
split = "test"
image = { png = "png/a.png" }
label = { class = 5 }
"""


@pytest.fixture()
def mixed_2d(tmp_path: Path) -> Path:
    for name, value in (("a", 10), ("b", 20), ("c", 30), ("truncated", 40), ("nolabel", 50)):
        _png(tmp_path / "png" / f"{name}.png", value)
    data = (tmp_path / "png" / "truncated.png").read_bytes()
    (tmp_path / "png" / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "labels.csv").write_text("id,label\na,0\nb,1\nc,1\ntruncated,0\n")
    np.savez(tmp_path / "set.npz", train_images=np.full((3, 8, 8), 7, np.uint8))
    (tmp_path / "manifest.toml").write_text(CLASSIFICATION)
    return tmp_path / "manifest.toml"


def test_bad_2d_cases_are_reported_and_left_out(mixed_2d: Path) -> None:
    before = _tree_state(mixed_2d.parent)
    dataset = SiteDataset.open(mixed_2d)
    report = dataset.check()
    results = {case.id: case for case in report.cases}
    assert {k for k, v in results.items() if v.ok} == {"a", "b", "c", "from-npz"}
    expected = {
        "truncated": ("png/truncated.png", "not a readable PNG image"),
        "nolabel": ("labels.csv", "no row for case 'nolabel'"),
        "npz-out-of-range": ("set.npz", "train_images[7]: index out of range (3)"),
        "missing-file": ("absent.png", "file or folder not found"),
        "unknown-class": ("(manifest)", "label value(s) [5] not among the data set's labels"),
    }
    for case_id, (file, reason) in expected.items():
        case = results[case_id]
        assert not case.ok and case.problem is not None and case.file is not None
        assert reason in case.problem, case
        if file != "(manifest)":
            assert case.file.endswith(file), case
    summary = report.summary
    assert (summary.cases, summary.passed, summary.failed) == (9, 4, 5)
    assert summary.per_split == {"train": 3, "val": 1}
    assert summary.per_label == {"train": {"finding": 2, "normal": 1}, "val": {"finding": 1}}
    assert summary.shape_range == ([8.0, 8.0], [10.0, 12.0])
    assert summary.intensity is not None
    assert summary.intensity["min"] == 7 and summary.intensity["max"] == 30
    assert report.usable and report.fingerprint == dataset.fingerprint
    assert json.loads(report.to_json())["summary"]["passed"] == 4
    data = dataset.load(Task.CLASSIFICATION, ["train", "val", "test"])
    np.testing.assert_array_equal(data.targets, [0, 1, 1, 1])
    assert _tree_state(mixed_2d.parent) == before  # nothing modified or deleted


SEGMENTATION = """
[dataset]
name = "ct-3d"
task = "segmentation"
modalities = ["CT"]

[preprocess]
spatial_size = [4, 6, 5]

[[files]]
images = "dicom/*"
masks = "labels/{name}.nii.gz"
split = "train"

[[case]]
id = "with-seg"
split = "test"
image = { dicom = "seg-source" }
label = { seg = "seg.dcm" }
"""


def _mask(path: Path, written_affine: np.ndarray, shape: tuple[int, int, int]) -> None:
    mask = np.zeros(shape, np.uint8)
    mask[1, 2:4, 1:3] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.T), written_affine), path)


def test_bad_dicom_cases_are_reported_and_left_out(tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    good = write_series(dicom / "good", n_slices=4, rows=6, columns=5)
    _mask(tmp_path / "labels" / "good.nii.gz", good.nifti_affine(), (4, 6, 5))
    labels = np.zeros((4, 6, 5), np.uint8)
    labels[2, 1:3, 1:4] = 1
    source = write_series(tmp_path / "seg-source", n_slices=4, rows=6, columns=5, patient_id="P2")
    write_seg(tmp_path / "seg.dcm", source.files, labels)
    write_series(dicom / "shifted", n_slices=4, rows=6, columns=5, seed=1)
    _mask(
        tmp_path / "labels" / "shifted.nii.gz",
        good.nifti_affine() @ np.diag([1, 1, 2, 1]),
        (4, 6, 5),
    )  # geometry mismatch
    bad: dict[str, dict[str, Any]] = {
        "truncated": {"truncate_bytes": 40},
        "nopixels": {"omit": ["PixelData"]},
        "irregular": {"positions": [[0, 0, 0], [0, 0, 2.5], [0, 0, 7.5], [0, 0, 10.0]]},
        "mr": {"modality": "MR"},
        "sizes": {"overrides": {1: {"Rows": 7}}},
    }
    for name, options in bad.items():
        written = write_series(dicom / name, n_slices=4, rows=6, columns=5, **options)
        _mask(tmp_path / "labels" / f"{name}.nii.gz", written.nifti_affine(), (4, 6, 5))
    codec = write_series(dicom / "codec", n_slices=2, rows=6, columns=5)
    for path in codec.files:
        declare_transfer_syntax(path, "1.2.3.4.5.6.7.8")
    (dicom / "empty").mkdir()
    (tmp_path / "manifest.toml").write_text(SEGMENTATION)
    before = _tree_state(tmp_path)

    report = SiteDataset.open(tmp_path / "manifest.toml").check()
    results = {case.id: case for case in report.cases}
    assert {k for k, v in results.items() if v.ok} == {"good", "with-seg"}
    for name in (*bad, "codec", "empty", "shifted"):
        case = results[name]
        assert not case.ok and case.file and case.problem, case
        where = "labels" if name == "shifted" else f"dicom/{name}"
        assert where in case.file, case
    assert "transfer syntax" in str(results["codec"].problem).lower()
    assert "modality" in str(results["mr"].problem).lower()
    assert results["with-seg"].labels == (0, 1) and results["good"].labels == (0, 1)
    # every file carries the factory's patient attributes: counted, not usable, no values
    assert not report.usable and report.summary.phi_files == len(report.cases) - 1
    assert "Doe" not in report.to_json()
    assert report.summary.modalities == {"CT": 2}
    assert report.summary.manufacturers == {"Consortia Test Scanner": 2}
    assert report.summary.spacing_range == ([2.5, 0.8, 0.7], [2.5, 0.8, 0.7])
    assert _tree_state(tmp_path) == before


def test_explicit_splits_of_one_dicom_patient_are_left_out(tmp_path: Path) -> None:
    for name in ("one", "two"):
        write_series(tmp_path / name, n_slices=1, rows=6, columns=5, patient_id="SAME")
    (tmp_path / "m.toml").write_text(
        '[dataset]\nname = "x"\ntask = "classification"\n[preprocess]\nspatial_size = [6, 5]\n'
        '[[case]]\nid = "one"\nsplit = "train"\nimage = { dicom = "one" }\nlabel = { class = 0 }\n'
        '[[case]]\nid = "two"\nsplit = "test"\nimage = { dicom = "two" }\nlabel = { class = 1 }\n'
    )
    report = SiteDataset.open(tmp_path / "m.toml").check()
    assert [case.ok for case in report.cases] == [False, False]
    assert all("splits train, test" in str(case.problem) for case in report.cases)
    assert "SAME" not in report.to_json()


def test_dicom_folder_check_uses_pydicom_test_files(tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(_testdata(name), tmp_path / name)
    (tmp_path / "notes.txt").write_text("not DICOM")
    progress: list[tuple[int, int]] = []
    report = check_dicom_folder(
        tmp_path, on_case=lambda done, total: progress.append((done, total))
    )
    ok = [case for case in report.cases if case.ok]
    assert len(ok) == 2 and progress[-1] == (2, 2)
    assert report.summary.modalities == {"CT": 1, "MR": 1}
    assert report.summary.shape_range == ([64.0, 64.0], [128.0, 128.0])
    problems = [case for case in report.cases if not case.ok]
    assert len(problems) == 1 and str(problems[0].file).endswith("notes.txt")
    assert report.task is None and report.summary.phi_files == 2 and not report.usable
    empty = tmp_path / "empty"
    empty.mkdir()
    report = check_dicom_folder(empty)
    assert not report.usable and "no DICOM files" in str(report.cases[0].problem)


def test_check_reports_progress_and_legacy_npz_problems(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "site.npz",
        train_images=np.zeros((3, 8, 8), np.uint8),
        train_labels=np.array([[0], [1], [1]]),
        test_images=np.zeros((2, 8, 8), np.uint8),
        test_labels=np.array([[0]]),  # one label short
    )
    progress: list[tuple[int, int]] = []
    report = SiteDataset.open(tmp_path / "site.npz").check(
        on_case=lambda done, total: progress.append((done, total))
    )
    assert progress == [(n, 5) for n in range(1, 6)]
    assert report.summary.per_split == {"train": 3, "test": 1}
    failed = [case for case in report.cases if not case.ok]
    assert len(failed) == 1 and "test_labels has no entry 1" in str(failed[0].problem)
