"""Data set manifests: the documented format parses, every mistake names file and field,
bulk sources expand deterministically, and splits keep each patient in one split."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from consortia.client.data.cases import expand_cases
from consortia.client.data.manifest import SplitRule, load_manifest
from consortia.client.data.splits import patient_split, split_conflicts
from consortia.common.errors import ConfigError

HEAD = """
[dataset]
name = "demo"
task = "{task}"

[preprocess]
spatial_size = [8, 8]
"""


def _manifest(tmp_path: Path, body: str, task: str = "classification") -> Path:
    path = tmp_path / "manifest.toml"
    path.write_text(HEAD.format(task=task) + body, encoding="utf-8")
    return path


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_every_documented_form_parses(tmp_path: Path) -> None:
    _touch(tmp_path / "images", "a.nii.gz", "b.nii.gz")
    np.savez(
        tmp_path / "set.npz",
        train_images=np.zeros((5, 8, 8), np.uint8),
        train_labels=np.array([[0], [1], [0], [1], [1]]),
    )
    path = _manifest(
        tmp_path,
        """
[split]
rule = "patient-hash"
salt = "x"

[simulation]
gamma = 1.2

[[case]]
id = "one"
patient = "p1"
split = "train"
image = { dicom = "dicom/one" }
label = { class = 1 }

[[case]]
id = "two"
image = { npz = "set.npz", key = "train_images", index = 3 }
label = { class = 0 }

[[files]]
images = "images/*.nii.gz"
class = 1

[[npz]]
file = "set.npz"
select = { modulo = 2, remainder = 1 }
""",
    )
    mf = load_manifest(path)
    assert mf.manifest.case[0].label is not None and mf.manifest.case[0].label.class_ == 1
    assert mf.manifest.simulation is not None and mf.manifest.simulation.gamma == 1.2
    cases = {case.id: case for case in expand_cases(mf)}
    assert set(cases) == {"one", "two", "a", "b", "set-train-1", "set-train-3"}
    assert cases["one"].image.kind == "dicom" and cases["one"].split == "train"
    assert cases["a"].image.kind == "nifti" and cases["a"].split in ("train", "val", "test")
    assert cases["set-train-3"].label is not None and cases["set-train-3"].label.value == 1
    assert cases["set-train-1"].split == "train"  # npz cases keep the archive's split


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '[[case]]\nid = "a"\nsplit = "train"\nimage = { pgn = "a.png" }\n',
            r"case\.0\.image\.pgn: unknown key",
        ),
        (
            '[[case]]\nid = "a"\nsplit = "train"\nimage = { png = "a.png", nifti = "a.nii" }\n',
            r"case\.0\.image: image needs exactly one of dicom, nifti, png, npz",
        ),
        (
            '[[case]]\nid = "a"\nsplit = "trian"\nimage = { png = "a.png" }\n',
            r"case\.0\.split: Input should be 'train', 'val' or 'test'",
        ),
        (
            '[[case]]\nid = "a"\nsplit = "train"\nimage = { npz = "a.npz" }\n',
            r"key and index go with npz",
        ),
        (
            '[[case]]\nid = "a"\nsplit = "train"\nimage = { png = "a.png" }\n'
            "label = { class = -1 }\n",
            r"case\.0\.label\.class: .*greater than or equal to 0",
        ),
        ('[[files]]\nimages = "*.png"\nmasks = "{nmae}.png"\n', r"unknown placeholder"),
        (
            '[[npz]]\nfile = "a.npz"\nselect = { modulo = 2, remainder = 2 }\n',
            r"npz\.0\.select: remainder must be smaller than modulo",
        ),
        (
            '[split]\nrule = "patient-hash"\ntrain = 0.9\n[[npz]]\nfile = "a.npz"\n',
            r"split: train \+ val \+ test must add up to 1",
        ),
        (
            '[[case]]\nid = "a"\nsplit = "train"\nimage = { png = "a.png" }\n' * 2,
            r"case id 'a' is given twice",
        ),
        ("", r"no cases"),
        ('[extra]\nx = 1\n[[npz]]\nfile = "a.npz"\n', r"extra: unknown key"),
    ],
)
def test_mistakes_name_file_and_field(tmp_path: Path, body: str, expected: str) -> None:
    path = _manifest(tmp_path, body)
    with pytest.raises(ConfigError, match=expected) as err:
        load_manifest(path)
    assert str(path) in str(err.value)


def test_wrong_types_and_missing_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        '[dataset]\nname = "x"\ntask = "regression"\n[preprocess]\n'
        'spatial_size = "big"\n[[npz]]\nfile = "a.npz"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_manifest(path)
    text = str(err.value)
    assert f"{path}: dataset.task:" in text
    assert f"{path}: preprocess.spatial_size:" in text
    path.write_text('[dataset]\nname = "x"\n[[npz]]\nfile = "a.npz"\n')
    with pytest.raises(ConfigError, match=r"dataset\.task: required key is missing"):
        load_manifest(path)
    with pytest.raises(ConfigError, match="not valid TOML"):
        path.write_text("[dataset\n")
        load_manifest(path)
    with pytest.raises(ConfigError, match="manifest not found"):
        load_manifest(tmp_path / "absent.toml")


def test_explicit_rule_needs_a_split_per_case(tmp_path: Path) -> None:
    _touch(tmp_path / "png", "a.png")
    path = _manifest(tmp_path, '[[files]]\nimages = "png/*.png"\nclass = 0\n')
    with pytest.raises(ConfigError, match=r"files\[0\]: case 'a' has no split"):
        expand_cases(load_manifest(path))


def test_glob_matching_nothing_is_an_error(tmp_path: Path) -> None:
    path = _manifest(tmp_path, '[[files]]\nimages = "png/*.png"\nclass = 0\nsplit = "train"\n')
    with pytest.raises(ConfigError, match=r"files\[0\]\.images: 'png/\*\.png' matches nothing"):
        expand_cases(load_manifest(path))


def test_one_patient_in_two_explicit_splits_is_an_error(tmp_path: Path) -> None:
    body = "".join(
        f'[[case]]\nid = "c{n}"\npatient = "p1"\nsplit = "{split}"\nimage = {{ png = "x.png" }}\n'
        for n, split in enumerate(["train", "train", "test"])
    )
    with pytest.raises(
        ConfigError, match=r"c0, c1, c2 are of one patient but in splits train, test"
    ):
        expand_cases(load_manifest(_manifest(tmp_path, body)))


def test_patient_hash_keeps_patients_together_and_respects_fractions(tmp_path: Path) -> None:
    # 2,000 cases of 500 patients, listed in a CSV with a patient column.
    names = [f"img{n:04d}.png" for n in range(2000)]
    _touch(tmp_path / "png", *names)
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "patient"])
        for n, name in enumerate(names):
            writer.writerow([name.removesuffix(".png"), n % 2, f"patient-{n % 500}"])
    path = _manifest(
        tmp_path,
        '[split]\nrule = "patient-hash"\nsalt = "s1"\ntrain = 0.6\nval = 0.2\ntest = 0.2\n'
        '[[files]]\nimages = "png/*.png"\n'
        'classes = { csv = "labels.csv", id_column = "image", patient_column = "patient" }\n',
    )
    cases = expand_cases(load_manifest(path))
    assert len(cases) == 2000
    splits_of: dict[str, set[str]] = defaultdict(set)
    for case in cases:
        assert case.patient is not None and case.split is not None
        splits_of[case.patient].add(case.split)
    assert all(len(splits) == 1 for splits in splits_of.values())
    per_split = Counter(next(iter(s)) for s in splits_of.values())
    assert abs(per_split["train"] / 500 - 0.6) < 0.08
    assert abs(per_split["val"] / 500 - 0.2) < 0.08
    # deterministic, and another salt moves patients
    again = expand_cases(load_manifest(path))
    assert [c.split for c in again] == [c.split for c in cases]
    other = SplitRule(rule="patient-hash", salt="s2", train=0.6, val=0.2, test=0.2)
    same = SplitRule(rule="patient-hash", salt="s1", train=0.6, val=0.2, test=0.2)
    moved = sum(patient_split(p, other) != patient_split(p, same) for p in splits_of)
    assert moved > 50


def test_split_conflicts_lists_patients_in_two_splits() -> None:
    pairs = [("a", "train"), ("a", "train"), ("b", "train"), ("b", "test"), ("c", "val")]
    assert split_conflicts(pairs) == {"b": ("train", "test")}


def test_selectors_partition_and_class_fraction_skews(tmp_path: Path) -> None:
    labels = np.arange(400) % 2
    np.savez(
        tmp_path / "set.npz",
        train_images=np.zeros((400, 4, 4), np.uint8),
        train_labels=labels[:, None],
        test_images=np.zeros((40, 4, 4), np.uint8),
        test_labels=(np.arange(40) % 2)[:, None],
    )
    sites = []
    for remainder in range(3):
        extra = "class_fraction = { 1 = 0.25 }\n" if remainder == 0 else ""
        path = _manifest(
            tmp_path,
            f'[[npz]]\nfile = "set.npz"\nselect = {{ modulo = 3, remainder = {remainder} }}\n'
            + extra,
        )
        sites.append(expand_cases(load_manifest(path)))
    ids = [{c.id for c in site} for site in sites]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    assert len(ids[1]) == len([i for i in range(400) if i % 3 == 1]) + 13
    skewed = Counter(c.label.value for c in sites[0] if c.label is not None)
    assert skewed[0] == 67 + 7  # every class-0 case of the selection is kept
    assert 0.1 < skewed[1] / (67 + 7) < 0.45  # about a quarter of the class-1 cases
    again = expand_cases(load_manifest(tmp_path / "manifest.toml"))
    assert [c.id for c in again] == [c.id for c in sites[2]]
    # an index range
    path = _manifest(
        tmp_path,
        '[[npz]]\nfile = "set.npz"\nsplits = ["train"]\n'
        "select = { start = 10, stop = 20, modulo = 5, remainder = 2 }\n",
    )
    assert [c.id for c in expand_cases(load_manifest(path))] == ["set-train-12", "set-train-17"]


def test_csv_label_problems_stay_on_the_case(tmp_path: Path) -> None:
    _touch(tmp_path / "png", "a.png", "b.png", "c.png")
    (tmp_path / "labels.csv").write_text("id,label\na,1\nc,maybe\n")
    path = _manifest(
        tmp_path,
        '[[files]]\nimages = "png/*.png"\nsplit = "train"\nclasses = { csv = "labels.csv" }\n',
    )
    cases = {case.id: case for case in expand_cases(load_manifest(path))}
    assert set(cases) == {"a", "b", "c"}  # nothing silently dropped
    assert cases["a"].label is not None and cases["a"].label.value == 1
    assert cases["b"].label is not None and "no row for case 'b'" in str(cases["b"].label.problem)
    assert cases["c"].label is not None and "'maybe'" in str(cases["c"].label.problem)
