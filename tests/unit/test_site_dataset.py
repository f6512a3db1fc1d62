"""SiteDataset: manifests of PNG, NIfTI, npz and DICOM cases read the way training reads
them, only passing cases used, a stable fingerprint, and a cache that spares re-reading."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from consortia.client.data.dataset import SiteDataset
from consortia.client.data.dicom.deidentify import deidentify_tree
from consortia.client.data.site_data import data_fingerprint, load_npz_splits
from consortia.common.config.settings import Task
from consortia.common.demo.data import DemoDataSettings, write_site_npz
from consortia.common.errors import DataError
from tests.support.dicom_factory import write_series

HEAD = """
[dataset]
name = "{name}"
task = "{task}"
{extra}

[preprocess]
spatial_size = {size}
channels = {channels}
resize = "{resize}"
"""


def _write(
    folder: Path,
    body: str,
    *,
    task: str = "segmentation",
    size: str = "[8, 10, 12]",
    channels: int = 1,
    resize: str = "pad-crop",
    name: str = "site",
    dataset_extra: str = "",
) -> Path:
    path = folder / "manifest.toml"
    head = HEAD.format(
        name=name, task=task, size=size, channels=channels, resize=resize, extra=dataset_extra
    )
    path.write_text(head + body, encoding="utf-8")
    return path


def _nifti(path: Path, array: np.ndarray) -> None:
    """Save a (D, H, W) array as NIfTI (nibabel indexes (i, j, k) = (W, H, D))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.T), np.eye(4)), path)


def _nifti_set(folder: Path, n: int, shape: tuple[int, int, int] = (6, 9, 14)) -> None:
    rng = np.random.default_rng(0)
    for k in range(n):
        image = rng.normal(100.0 * k, 10.0, size=shape).astype(np.float32)
        mask = np.zeros(shape, np.uint8)
        mask[2:4, 3:6, 4:10] = 1 + k % 2
        _nifti(folder / "images" / f"case{k}.nii.gz", image)
        _nifti(folder / "labels" / f"case{k}.nii.gz", mask)


NIFTI_BODY = """
[split]
rule = "patient-hash"
train = 0.5
val = 0.0
test = 0.5

[[files]]
images = "images/*.nii.gz"
masks = "labels/{name}"
"""


def test_nifti_segmentation_pads_crops_and_keeps_values(tmp_path: Path) -> None:
    _nifti_set(tmp_path, 6)
    dataset = SiteDataset.open(_write(tmp_path, NIFTI_BODY))
    assert dataset.task is Task.SEGMENTATION and dataset.name == "site"
    data = dataset.load(Task.SEGMENTATION, ("train", "test"))
    assert data.images.shape == (6, 1, 8, 10, 12) and data.images.dtype == np.float32
    assert data.targets.shape == (6, 8, 10, 12) and data.targets.dtype == np.int64
    # values as read (no rescaling); the labelled block survives the centred pad/crop
    assert data.images.max() > 400
    assert sorted(np.unique(data.targets)) == [0, 1, 2]
    assert int((data.targets > 0).sum()) == 6 * 2 * 3 * 6
    assert (
        dataset.count(Task.SEGMENTATION, ("train",)) + dataset.count(Task.SEGMENTATION, ("test",))
        == 6
    )


def test_resize_mode_uses_nearest_neighbour_for_labels(tmp_path: Path) -> None:
    _nifti_set(tmp_path, 2)
    path = _write(tmp_path, NIFTI_BODY, size="[12, 18, 28]", resize="resize")
    data = SiteDataset.open(path).load(Task.SEGMENTATION, ("train", "val", "test"))
    assert data.targets.shape == (2, 12, 18, 28)
    assert set(np.unique(data.targets)) <= {0, 1, 2}
    assert int((data.targets > 0).sum()) == 2 * 4 * 6 * 12  # exactly doubled per axis


def test_a_crop_that_would_cut_labels_fails_the_check_and_names_the_setting(
    tmp_path: Path,
) -> None:
    _nifti_set(tmp_path, 2)  # labels fill [2:4, 3:6, 4:10] of (6, 9, 14)
    fits = SiteDataset.open(_write(tmp_path, NIFTI_BODY, size="[4, 6, 6]"))
    assert fits.check().summary.failed == 0  # the centred crop keeps every labelled voxel
    data = fits.load(Task.SEGMENTATION, ("train", "test"))
    assert int((data.targets > 0).sum()) == 2 * 2 * 3 * 6
    cut = SiteDataset.open(_write(tmp_path, NIFTI_BODY, size="[4, 6, 4]"))
    report = cut.check()
    assert report.summary.failed == 2 and not report.usable
    for result in report.cases:
        assert result.problem is not None
        assert "would cut labelled voxels" in result.problem
        assert "enlarge preprocess.spatial_size" in result.problem
    with pytest.raises(DataError, match="no usable case"):
        cut.load(Task.SEGMENTATION, ("train", "test"))


def test_only_passing_cases_are_loaded(tmp_path: Path) -> None:
    _nifti_set(tmp_path, 4)
    _nifti(tmp_path / "labels" / "case1.nii.gz", np.zeros((6, 9, 13), np.uint8))  # bad shape
    (tmp_path / "images" / "case2.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "labels" / "case3.nii.gz").unlink()
    dataset = SiteDataset.open(_write(tmp_path, NIFTI_BODY))
    data = dataset.load(Task.SEGMENTATION, ("train", "val", "test"))
    assert len(data) == 1
    report = dataset.check()
    problems = {case.id: case for case in report.cases if not case.ok}
    assert set(problems) == {"case1", "case2", "case3"}
    assert problems["case3"].file is not None and problems["case3"].file.endswith(
        "labels/case3.nii.gz"
    )


def _png_set(folder: Path, n: int, colour: bool = False) -> None:
    (folder / "png").mkdir(parents=True, exist_ok=True)
    rows = ["id,label"]
    for k in range(n):
        value = np.full((10, 12), 20 * k, np.uint8)
        image = np.stack([value, value // 2, value // 4], -1) if colour else value
        Image.fromarray(image).save(folder / "png" / f"img{k}.png")
        rows.append(f"img{k},{k % 2}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


PNG_BODY = """
[[files]]
images = "png/*.png"
split = "train"
classes = { csv = "labels.csv" }
"""


def test_png_classification_with_channel_handling(tmp_path: Path) -> None:
    _png_set(tmp_path, 4, colour=True)
    path = _write(tmp_path, PNG_BODY, task="classification", size="[8, 8]")
    data = SiteDataset.open(path).load(Task.CLASSIFICATION, ("train",))
    assert data.images.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(data.targets, [0, 1, 0, 1])
    # colour to grey with luma weights, values as read
    expected = 0.299 * 60 + 0.587 * 30 + 0.114 * 15
    assert data.images[3].mean() == pytest.approx(expected, rel=1e-5)
    path = _write(tmp_path, PNG_BODY, task="classification", size="[10, 12]", channels=3)
    grey_to_three = tmp_path / "grey"
    _png_set(grey_to_three, 2)
    shutil.copy(path, grey_to_three / "manifest.toml")
    data = SiteDataset.open(grey_to_three / "manifest.toml").load(Task.CLASSIFICATION, ["train"])
    assert data.images.shape == (2, 3, 10, 12)
    np.testing.assert_array_equal(data.images[1, 0], data.images[1, 2])


def test_task_mismatch_and_no_usable_case_are_data_errors(tmp_path: Path) -> None:
    _png_set(tmp_path, 2)
    dataset = SiteDataset.open(_write(tmp_path, PNG_BODY, task="classification", size="[8, 8]"))
    with pytest.raises(DataError, match="for classification, the run asks for segmentation"):
        dataset.load(Task.SEGMENTATION, ("train",))
    with pytest.raises(DataError, match="no usable case in split"):
        dataset.load(Task.CLASSIFICATION, ("test",))
    with pytest.raises(ValueError, match="unknown split"):
        dataset.load(Task.CLASSIFICATION, ("training",))


def test_legacy_npz_keeps_working(tmp_path: Path) -> None:
    path = write_site_npz(
        tmp_path / "site.npz", 0, DemoDataSettings(image_size=32, train_cases=4, test_cases=2)
    )
    dataset = SiteDataset.open(path)
    assert dataset.task is None
    assert dataset.fingerprint == data_fingerprint(path)
    for task in Task:
        loaded = dataset.load(task, ("train", "test"))
        expected = load_npz_splits(path, task, ("train", "test"))
        np.testing.assert_array_equal(loaded.images, expected.images)
        np.testing.assert_array_equal(loaded.targets, expected.targets)
    assert dataset.count(Task.CLASSIFICATION, ("test",)) == 2
    report = dataset.check()
    assert report.usable and report.summary.per_split == {"train": 4, "test": 2}


def test_fingerprint_is_stable_across_paths_and_tracks_content(tmp_path: Path) -> None:
    _nifti_set(tmp_path / "a", 2)
    _write(tmp_path / "a", NIFTI_BODY)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first = SiteDataset.open(tmp_path / "a" / "manifest.toml").fingerprint
    assert len(first) == 64
    assert SiteDataset.open(tmp_path / "b" / "manifest.toml").fingerprint == first
    _nifti(tmp_path / "b" / "labels" / "case0.nii.gz", np.zeros((6, 9, 14), np.uint8))
    assert SiteDataset.open(tmp_path / "b" / "manifest.toml").fingerprint != first
    # the manifest's bytes count too (e.g. a [simulation] table)
    with (tmp_path / "a" / "manifest.toml").open("a") as handle:
        handle.write("\n[simulation]\nnoise = 0.1\n")
    assert SiteDataset.open(tmp_path / "a" / "manifest.toml").fingerprint != first


def test_simulated_shift_is_deterministic_and_changes_images(tmp_path: Path) -> None:
    _nifti_set(tmp_path, 2)
    plain = SiteDataset.open(_write(tmp_path, NIFTI_BODY)).load(
        Task.SEGMENTATION, ["train", "test"]
    )
    body = NIFTI_BODY + "\n[simulation]\ngamma = 1.5\ncontrast = 0.8\nnoise = 0.1\nblur = 0.7\n"
    shifted = SiteDataset.open(_write(tmp_path, body)).load(Task.SEGMENTATION, ["train", "test"])
    again = SiteDataset.open(_write(tmp_path, body)).load(Task.SEGMENTATION, ["train", "test"])
    assert not np.allclose(plain.images, shifted.images)
    np.testing.assert_array_equal(shifted.images, again.images)
    np.testing.assert_array_equal(plain.targets, shifted.targets)


def _tree_state(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_cache_spares_rereading_and_is_invalidated_by_the_fingerprint(tmp_path: Path) -> None:
    data_dir, cache = tmp_path / "data", tmp_path / "cache"
    _nifti_set(data_dir, 4)
    manifest = _write(data_dir, NIFTI_BODY)
    first = SiteDataset.open(manifest, cache_dir=cache)
    loaded = first.load(Task.SEGMENTATION, ["train", "test"])
    assert first.cases_read == 4
    entries = list((cache / "datasets").glob("*/*/index.json"))
    assert len(entries) == 1
    assert not list(cache.rglob("*.tmp"))  # atomic writes leave no temporary files

    # Overwrite an image with garbage of the same size and modification time: the file hash
    # cache and the array cache are both hit, so nothing is read from the source files.
    image = data_dir / "images" / "case0.nii.gz"
    info = image.stat()
    image.write_bytes(b"\0" * info.st_size)
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))
    second = SiteDataset.open(manifest, cache_dir=cache)
    again = second.load(Task.SEGMENTATION, ["train", "test"])
    assert second.cases_read == 0 and second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.images, loaded.images)
    assert second.count(Task.SEGMENTATION, ["train", "test"]) == 4

    # A real change (new modification time) changes the fingerprint and rebuilds.
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    third = SiteDataset.open(manifest, cache_dir=cache)
    assert third.fingerprint != first.fingerprint
    assert len(third.load(Task.SEGMENTATION, ["train", "test"])) == 3  # case0 now unreadable
    assert third.cases_read == 4
    # `check` with a cache folder reads every case and fills the cache for `load`
    image.write_bytes((data_dir / "images" / "case1.nii.gz").read_bytes())
    fourth = SiteDataset.open(manifest, cache_dir=cache)
    assert fourth.check().summary.passed == 4 and fourth.cases_read == 4
    assert len(fourth.load(Task.SEGMENTATION, ["train", "test"])) == 4
    assert fourth.cases_read == 4
    assert len(list((cache / "datasets").glob("*/*/index.json"))) == 1  # stale entry removed


def test_corrupt_cache_file_is_discarded_and_rebuilt(tmp_path: Path) -> None:
    _nifti_set(tmp_path / "data", 3)
    manifest, cache = _write(tmp_path / "data", NIFTI_BODY), tmp_path / "cache"
    expected = SiteDataset.open(manifest, cache_dir=cache).load(Task.SEGMENTATION, ["train"])
    for split_file in (cache / "datasets").glob("*/*/train.npz"):
        split_file.write_bytes(split_file.read_bytes()[:100])
    dataset = SiteDataset.open(manifest, cache_dir=cache)
    rebuilt = dataset.load(Task.SEGMENTATION, ["train"])
    assert dataset.cases_read == 3
    np.testing.assert_array_equal(rebuilt.images, expected.images)
    again = SiteDataset.open(manifest, cache_dir=cache)
    again.load(Task.SEGMENTATION, ["train"])
    assert again.cases_read == 0


DICOM_BODY = """
[split]
rule = "patient-hash"
salt = "t"
train = 0.5
val = 0.0
test = 0.5

[[files]]
images = "dicom/*"
masks = "labels/{name}.nii.gz"
"""


def _dicom_site(folder: Path, patients: list[str]) -> None:
    """Series of a few patients (two series each) with NIfTI masks on the series grid."""
    for number, patient in enumerate(patients):
        for repeat in range(2):
            name = f"s{number}-{repeat}"
            written = write_series(
                folder / "raw" / name,
                n_slices=3,
                rows=6,
                columns=5,
                patient_id=patient,
                seed=number * 2 + repeat,
            )
            mask = np.zeros((3, 6, 5), np.uint8)
            mask[1, 2:4, 1:3] = 1
            path = folder / "data" / "labels" / f"{name}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.T), written.nifti_affine()), path)


def test_dicom_with_phi_is_refused_until_deidentified(tmp_path: Path) -> None:
    _dicom_site(tmp_path, [f"PAT-{n}" for n in range(6)])
    shutil.copytree(tmp_path / "raw", tmp_path / "data" / "dicom")
    manifest = _write(
        tmp_path / "data", DICOM_BODY, size="[3, 6, 5]", dataset_extra='modalities = ["CT"]'
    )
    before = _tree_state(tmp_path / "data" / "dicom")
    raw = SiteDataset.open(manifest)
    with pytest.raises(DataError, match="consortia data deidentify") as err:
        raw.load(Task.SEGMENTATION, ["train", "test"])
    assert "PAT-" not in str(err.value) and "Doe" not in str(err.value)
    report = raw.check()
    assert not report.usable and report.summary.phi_files == 12  # every case (series)
    assert report.summary.phi.get("PatientName") == 36  # counted per file, never values
    assert "Doe" not in report.to_json() and "PAT-1" not in report.to_json()
    assert _tree_state(tmp_path / "data" / "dicom") == before  # nothing modified

    # The de-identified copy trains; the pseudonymised PatientID keeps patients together.
    shutil.rmtree(tmp_path / "data" / "dicom")
    deidentify_tree(tmp_path / "raw", tmp_path / "data" / "dicom")
    dataset = SiteDataset.open(manifest)
    report = dataset.check()
    assert report.summary.phi_files == 0 and report.summary.passed == 12
    by_patient: dict[str, set[str | None]] = {}
    for case in report.cases:
        by_patient.setdefault(case.id.split("-")[0], set()).add(case.split)
    assert all(len(splits) == 1 for splits in by_patient.values())
    assert len(by_patient) == 6
    assert report.summary.modalities == {"CT": 12}
    data = dataset.load(Task.SEGMENTATION, ["train", "test"])
    assert data.images.shape == (12, 1, 3, 6, 5)
    assert int(data.targets.sum()) == 12 * 4
