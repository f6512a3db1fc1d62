"""De-identified copies: identifiers planted everywhere (nested sequences, private tags,
file meta, a SEG made by highdicom) leave no trace in the output bytes, originals stay
byte-identical, and series/study/SEG relations survive the UID replacement."""

from __future__ import annotations

import hashlib
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from consortia.client.data.dicom.confidentiality_profile import profile_action
from consortia.client.data.dicom.deidentify import (
    DeidentifyReport,
    UidMap,
    deidentify_dataset,
    deidentify_tree,
)
from consortia.client.data.dicom.phi import guard_dataset, guard_file, is_deidentified
from consortia.common.errors import DataError
from tests.unit.test_phi import MARKERS, bundled_file, plant_identifiers

CT_SLICES = 3


def _slices(name: str, patient: str, count: int) -> list[Dataset]:
    slices = []
    for index in range(count):
        ds = plant_identifiers(pydicom.dcmread(bundled_file(name)), patient)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * index]
        slices.append(ds)
    return slices


def _segmentation(source: list[Dataset]) -> hd.seg.Segmentation:
    mask = np.zeros((len(source), int(source[0].Rows), int(source[0].Columns)), dtype=bool)
    mask[:, 40:60, 40:60] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=hd.sr.CodedConcept(
            "49755003", "SCT", "Morphologically Altered Structure"
        ),
        segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return hd.seg.Segmentation(
        source_images=source,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Consortia",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="PLANTSTUDY7",
    )


def _instance_uids(ds: Dataset) -> set[str]:
    """Every UID the profile replaces, at any depth."""
    found: set[str] = set()
    for elem in ds.iterall():
        if elem.VR == "UI" and not elem.is_empty and profile_action(elem.tag, "UI") == "U":
            values = elem.value if isinstance(elem.value, list) else [elem.value]
            found.update(str(value) for value in values if len(str(value)) > 20)
    return found


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, DeidentifyReport, dict]:
    root = tmp_path_factory.mktemp("deid")
    src, dst = root / "src", root / "out" / "copy"
    ct = _slices("CT_small.dcm", "ALICE", CT_SLICES)
    first = ct[0].SOPInstanceUID
    reference = Dataset()
    reference.ReferencedSOPClassUID = ct[0].SOPClassUID
    reference.ReferencedSOPInstanceUID = first
    for ds in ct[1:]:
        ds.ReferencedImageSequence = [reference]
    mr = _slices("MR_small.dcm", "BOB", 2)
    seg = _segmentation(ct)
    originals: set[str] = set()
    for folder, datasets in (("alice/ct", ct), ("bob/mr", mr), ("alice/seg", [seg])):
        (src / folder).mkdir(parents=True)
        for index, ds in enumerate(datasets):
            ds.save_as(src / folder / f"{index}.dcm", enforce_file_format=True)
            originals |= _instance_uids(ds)
    burned = pydicom.dcmread(bundled_file("CT_small.dcm"))
    burned.BurnedInAnnotation = "YES"
    burned.save_as(src / "alice" / "burned.dcm")
    (src / "alice" / "notes.txt").write_text("PLANTNAME^ALICE PLANTID4411ALICE\n")
    before = _digests(src)
    ticks: list[tuple[int, int]] = []
    report = deidentify_tree(src, dst, on_file=lambda done, total: ticks.append((done, total)))
    facts = {"before": before, "originals": originals, "ticks": ticks, "first_ct": first}
    return src, dst, report, facts


def _read(dst: Path, relative: str) -> Dataset:
    return pydicom.dcmread(dst / relative)


def test_report_and_layout(job: tuple[Path, Path, DeidentifyReport, dict]) -> None:
    _, dst, report, facts = job
    written = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert written == [
        "alice/ct/0.dcm",
        "alice/ct/1.dcm",
        "alice/ct/2.dcm",
        "alice/seg/0.dcm",
        "bob/mr/0.dcm",
        "bob/mr/1.dcm",
    ]
    assert report.files_written == 6
    reasons = {Path(p.path).name: p.reason for p in report.problems}
    assert set(reasons) == {"burned.dcm", "notes.txt"}
    assert "BurnedInAnnotation" in reasons["burned.dcm"]
    assert "not a DICOM file" in reasons["notes.txt"]
    assert facts["ticks"][-1] == (8, 8) and len(facts["ticks"]) == 8
    for kind in ("removed", "emptied", "dummy", "uid_replaced", "private_removed"):
        assert report.changes[kind] > 0, kind
    assert report.per_keyword["private"] == report.changes["private_removed"]
    assert report.per_keyword["PatientName"] == 6
    assert report.per_keyword["OtherPatientIDsSequence"] == 6
    text = repr(report.changes) + repr(report.per_keyword)
    assert not [marker for marker in MARKERS if marker in text]
    # nothing else beside dst: the temporary folder was renamed
    assert [p.name for p in dst.parent.iterdir()] == ["copy"]


def test_no_identifier_left_in_any_output_byte(
    job: tuple[Path, Path, DeidentifyReport, dict],
) -> None:
    _, dst, _, facts = job
    assert len(facts["originals"]) > 10
    for path in dst.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        assert data[:128] == bytes(128), path  # CT_small's preamble is a TIFF header
        left = [marker for marker in MARKERS if marker.encode() in data]
        assert not left, (path, left)
        old_uids = [uid for uid in facts["originals"] if uid.encode() in data]
        assert not old_uids, (path, old_uids)
        ds = pydicom.dcmread(path)
        assert guard_dataset(ds) == [], path
        assert guard_file(path) == []
        assert is_deidentified(ds)
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert not any(elem.tag.is_private for elem in ds.iterall())
        assert "RequestAttributesSequence" not in ds and 0x60003000 not in ds


def test_originals_untouched_and_still_blocked(
    job: tuple[Path, Path, DeidentifyReport, dict],
) -> None:
    src, _, _, facts = job
    assert _digests(src) == facts["before"]
    assert guard_file(src / "alice" / "ct" / "0.dcm") != []


def test_relations_and_pseudonyms_survive(
    job: tuple[Path, Path, DeidentifyReport, dict],
) -> None:
    src, dst, _, _ = job
    ct = [_read(dst, f"alice/ct/{i}.dcm") for i in range(CT_SLICES)]
    mr = [_read(dst, f"bob/mr/{i}.dcm") for i in range(2)]
    seg = _read(dst, "alice/seg/0.dcm")
    original_ct = pydicom.dcmread(src / "alice" / "ct" / "0.dcm")

    assert len({ds.SeriesInstanceUID for ds in ct}) == 1
    assert len({ds.StudyInstanceUID for ds in ct}) == 1
    assert len({ds.FrameOfReferenceUID for ds in ct}) == 1
    assert len({ds.SOPInstanceUID for ds in ct}) == CT_SLICES
    assert ct[0].SeriesInstanceUID != original_ct.SeriesInstanceUID
    assert ct[0].StudyInstanceUID != mr[0].StudyInstanceUID
    assert ct[0].SeriesInstanceUID != mr[0].SeriesInstanceUID
    # a reference inside the CT series resolves to the new UID of the first slice
    assert ct[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == ct[0].SOPInstanceUID
    assert ct[1].ReferencedImageSequence[0].ReferencedSOPClassUID == ct[0].SOPClassUID

    # the SEG still points at its source images, in the same study and frame of reference
    new_ct_uids = {ds.SOPInstanceUID for ds in ct}
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == (
        new_ct_uids
    )
    per_frame = {
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
    }
    assert per_frame == new_ct_uids
    assert seg.StudyInstanceUID == ct[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    assert hd.seg.segread(dst / "alice" / "seg" / "0.dcm").number_of_segments == 1

    # one pseudonym per patient, in PatientID and PatientName, unrelated to the original
    alice = {str(ds.PatientID) for ds in [*ct, seg]} | {str(ds.PatientName) for ds in ct}
    bob = {str(ds.PatientID) for ds in mr}
    assert len(alice) == 1 and len(bob) == 1 and alice != bob
    assert next(iter(alice)).startswith("ANON-")

    # pixel data is copied as is
    np.testing.assert_array_equal(ct[0].pixel_array, original_ct.pixel_array)


def test_refuses_unsafe_destinations(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pydicom.dcmread(bundled_file("CT_small.dcm")).save_as(src / "a.dcm")
    before = _digests(src)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old.dcm").write_bytes(b"x")
    with pytest.raises(DataError, match="not an empty folder"):
        deidentify_tree(src, busy)
    with pytest.raises(DataError, match="inside the source"):
        deidentify_tree(src, src / "copy")
    with pytest.raises(DataError, match="inside the source"):
        deidentify_tree(src, src)
    with pytest.raises(DataError, match="not a folder"):
        deidentify_tree(src / "a.dcm", tmp_path / "x")
    assert _digests(src) == before
    assert not (src / "copy").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert deidentify_tree(src, empty).files_written == 1
    assert (empty / "a.dcm").is_file()


def test_interrupted_job_leaves_no_destination(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.dcm", "b.dcm"):
        pydicom.dcmread(bundled_file("CT_small.dcm")).save_as(src / name)

    def stop(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        deidentify_tree(src, out / "copy", on_file=stop)
    assert list(out.iterdir()) == []  # neither dst nor a half-written temporary folder


def test_deidentify_dataset_counts_and_uid_map() -> None:
    uids = UidMap()
    ds = plant_identifiers(pydicom.dcmread(bundled_file("CT_small.dcm")))
    series = ds.SeriesInstanceUID
    changes = deidentify_dataset(ds, uids)
    assert changes["private_removed"] > 100  # CT_small.dcm's GE blocks and ours
    assert changes["uid_replaced"] >= 5 and changes["pseudonymised"] == 2
    assert ds.SeriesInstanceUID == uids.map(series) != series
    assert uids.map(series) == uids.map(series + "\x00")  # padding does not matter
    assert uids.map("") == ""
    # the D-action ContentSequence is kept, with dummies in it
    assert ds.ContentSequence[0].TextValue == "ANONYMIZED"
    assert ds.ContentSequence[0].PersonName == "ANONYMIZED"
    assert ds["ReferringPhysicianName"].is_empty and ds["StudyDate"].is_empty
    # pseudonyms: stable within a job, distinct per patient, different in another job
    assert uids.pseudonym("P1") == uids.pseudonym("P1") != uids.pseudonym("P2")
    assert UidMap().pseudonym("P1") != uids.pseudonym("P1")
    assert "P1" not in uids.pseudonym("P1")[5:]
