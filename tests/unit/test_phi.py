"""PHI guard: identifiers planted in real DICOM files are found at any depth, by location,
without their values; files marked de-identified pass only when no real value is left."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from consortia.client.data.dicom.confidentiality_profile import (
    BASIC_PROFILE,
    is_placeholder,
    profile_action,
)
from consortia.client.data.dicom.deidentify import UidMap, deidentify_dataset
from consortia.client.data.dicom.phi import (
    PhiFinding,
    find_identifiers,
    guard_dataset,
    guard_file,
    is_deidentified,
)
from consortia.client.data.formats.volume import CaseProblem

# Distinctive values planted below; none may survive de-identification anywhere.
MARKERS = (
    "PLANTNAME",
    "PLANTID4411",
    "19231107",  # birth date
    "19870214",  # study date
    "19911231",  # nested date
    "PLANTINSTITUTE",
    "PLANTSTREET",
    "PLANTDOCTOR",
    "PLANTACC991",
    "PLANTSTUDY7",
    "PLANTOTHERID",
    "PLANTISSUER",
    "PLANTREQ5",
    "PLANTSPS6",
    "PLANTNESTEDNAME",
    "PLANTCREATOR",
    "PLANTPRIVATE",
    "PLANTDEEPPRIVATE",
    "PLANTTEXT",
    "PLANTOBSERVER",
    "PLANTOVERLAY",
    "JFK IMAGING CENTER",  # already in CT_small.dcm
    "CLUNIE1",  # CT_small.dcm's source AE title (file meta)
)


def bundled_file(name: str) -> Path:
    """A file bundled with pydicom."""
    found = get_testdata_file(name)
    assert isinstance(found, str), name
    return Path(found)


def plant_identifiers(ds: Dataset, patient: str = "ALICE") -> Dataset:
    """Put identifiers everywhere the profile looks: top level, nested sequences at two
    levels, a private block (with a private sequence), a D-action sequence, an overlay."""
    ds.PatientName = f"PLANTNAME^{patient}"
    ds.PatientID = f"PLANTID4411{patient}"
    ds.PatientBirthDate = "19231107"
    ds.StudyDate = "19870214"
    ds.InstitutionName = "PLANTINSTITUTE GENERAL"
    ds.InstitutionAddress = "17 PLANTSTREET"
    ds.ReferringPhysicianName = "PLANTDOCTOR^BOB"
    ds.AccessionNumber = "PLANTACC991"
    ds.StudyID = "PLANTSTUDY7"
    other = Dataset()
    other.PatientID = "PLANTOTHERID"
    other.IssuerOfPatientID = "PLANTISSUER"
    ds.OtherPatientIDsSequence = Sequence([other])
    referenced_study = Dataset()
    referenced_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    referenced_study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    request = Dataset()
    request.RequestedProcedureID = "PLANTREQ5"
    request.ScheduledProcedureStepID = "PLANTSPS6"
    request.ScheduledPerformingPhysicianName = "PLANTNESTEDNAME^CAROL"
    request.ScheduledProcedureStepStartDate = "19911231"
    request.ReferencedStudySequence = Sequence([referenced_study])
    request.private_block(0x0043, "PLANTCREATOR", create=True).add_new(
        0x01, "LO", "PLANTDEEPPRIVATE"
    )
    ds.RequestAttributesSequence = Sequence([request])
    block = ds.private_block(0x0041, "PLANTCREATOR", create=True)
    block.add_new(0x01, "LO", "PLANTPRIVATE")
    private_item = Dataset()
    private_item.PatientName = "PLANTNAME^INPRIVATE"
    block.add_new(0x02, "SQ", Sequence([private_item]))
    content = Dataset()
    content.ValueType = "TEXT"
    content.TextValue = "PLANTTEXT about the patient"
    content.PersonName = "PLANTOBSERVER^DAN"
    ds.ContentSequence = Sequence([content])
    ds.add_new(0x60003000, "OW", b"PLANTOVERLAY")
    return ds


def planted_ct() -> Dataset:
    return plant_identifiers(pydicom.dcmread(bundled_file("CT_small.dcm")))


def test_table_rows_come_from_the_standard() -> None:
    assert len(BASIC_PROFILE) > 600  # Table E.1-1 has several hundred rows
    expected = {
        "PatientName": "Z",
        "PatientBirthDate": "Z",
        "StudyDate": "Z",
        "AccessionNumber": "Z",
        "InstitutionName": "X/Z/D",
        "InstitutionAddress": "X",
        "OtherPatientIDsSequence": "X",
        "RequestAttributesSequence": "X",
        "ReferencedStudySequence": "X/Z",
        "StudyInstanceUID": "U",
        "SOPInstanceUID": "U",
        "ReferencedSOPInstanceUID": "U",
        "ReferencedImageSequence": "X/Z/U*",
        "ContentSequence": "D",
    }
    for keyword, action in expected.items():
        assert profile_action(Tag(keyword), "") == action, keyword
    assert profile_action(Tag(0x00091001), "LO") == "X"  # private
    assert profile_action(Tag(0x60023000), "OW") == "X"  # overlay data, any overlay group
    assert profile_action(Tag(0x50100005), "US") == "X"  # curve data
    assert profile_action(Tag("PersonName"), "PN") == "D"  # a listed Person Name
    assert profile_action(Tag("EvaluatorName"), "PN") == "Z"  # any other Person Name
    assert profile_action(Tag("SecondaryReviewDate"), "DA") == "X/Z"  # any other date
    assert profile_action(Tag("Modality"), "CS") is None
    assert profile_action(Tag("ReferencedSOPClassUID"), "UI") is None
    assert is_placeholder("PN", "") and is_placeholder("DA", "19000101")
    assert not is_placeholder("PN", "Smith^John") and not is_placeholder("DA", "19231107")


def test_finds_nested_and_private_identifiers_by_location() -> None:
    findings = find_identifiers(planted_ct())
    by_location = {finding.location: finding for finding in findings}
    for location in (
        "PatientName",
        "PatientBirthDate",
        "InstitutionAddress",
        "OtherPatientIDsSequence",
        "OtherPatientIDsSequence[0].PatientID",
        "OtherPatientIDsSequence[0].IssuerOfPatientID",
        "RequestAttributesSequence[0].RequestedProcedureID",
        "RequestAttributesSequence[0].ScheduledPerformingPhysicianName",
        "RequestAttributesSequence[0].ScheduledProcedureStepStartDate",
        "RequestAttributesSequence[0].ReferencedStudySequence[0].ReferencedSOPInstanceUID",
        "ContentSequence[0].PersonName",
        "OverlayData",
        "SOPInstanceUID",
        "file_meta.MediaStorageSOPInstanceUID",
        "file_meta.SourceApplicationEntityTitle",
    ):
        assert location in by_location, location
    expected = PhiFinding("(0010,0010)", "PatientName", "PatientName", "Z")
    assert by_location["PatientName"] == expected
    nested = by_location["RequestAttributesSequence[0].ScheduledPerformingPhysicianName"]
    assert (nested.tag, nested.action) == ("(0040,0006)", "X")
    private = [finding for finding in findings if finding.keyword == "private"]
    locations = {finding.location for finding in private}
    assert {"(0041,0010)", "(0041,1001)", "(0041,1002)"} <= locations
    assert "RequestAttributesSequence[0].(0043,1001)" in locations
    assert {finding.action for finding in private} == {"X"}
    assert "(0009,1001)" in locations  # CT_small.dcm's own GE private tags
    # findings name places, never values
    text = repr(findings)
    assert not [marker for marker in MARKERS if marker in text]


def test_empty_attributes_are_not_findings() -> None:
    ds = Dataset()
    ds.PatientName = ""
    ds.StudyDate = ""
    ds.OtherPatientIDsSequence = Sequence([])
    ds.Modality = "CT"
    assert find_identifiers(ds) == []
    ds.PatientName = "Doe^Jane"
    assert [finding.keyword for finding in find_identifiers(ds)] == ["PatientName"]


def test_is_deidentified_needs_the_flag_and_a_method() -> None:
    ds = Dataset()
    assert not is_deidentified(ds)
    ds.PatientIdentityRemoved = "YES"
    assert not is_deidentified(ds)
    ds.DeidentificationMethod = "some method"
    assert is_deidentified(ds)
    ds.PatientIdentityRemoved = "NO"
    assert not is_deidentified(ds)
    coded = Dataset()
    coded.PatientIdentityRemoved = "YES"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    coded.DeidentificationMethodCodeSequence = Sequence([code])
    assert is_deidentified(coded)


def test_guard_blocks_unmarked_and_passes_our_copy() -> None:
    original = planted_ct()
    assert guard_dataset(original) == find_identifiers(original) != []
    copy = planted_ct()
    deidentify_dataset(copy, UidMap())
    assert is_deidentified(copy)
    assert guard_dataset(copy) == []
    # the copy still has findings (pseudonym, new UIDs, dummies), all of allowed values
    assert {f.keyword for f in find_identifiers(copy)} >= {"PatientName", "SOPInstanceUID"}


def test_guard_blocks_a_copy_that_claims_yes_but_keeps_a_real_value() -> None:
    copy = planted_ct()
    deidentify_dataset(copy, UidMap())
    copy.PatientName = "Doe^Jane"
    assert [finding.location for finding in guard_dataset(copy)] == ["PatientName"]

    liar = pydicom.dcmread(bundled_file("MR_small.dcm"))
    liar.PatientIdentityRemoved = "YES"
    liar.DeidentificationMethod = "trust me"
    blocked = {finding.location for finding in guard_dataset(liar)}
    assert {"PatientName", "StudyDate", "InstitutionName"} <= blocked
    assert "SOPInstanceUID" not in blocked  # UIDs of a marked file are trusted

    burned = planted_ct()
    deidentify_dataset(burned, UidMap())
    burned.BurnedInAnnotation = "YES"
    assert [(f.keyword, f.action) for f in guard_dataset(burned)] == [("BurnedInAnnotation", "C")]

    nested = planted_ct()
    deidentify_dataset(nested, UidMap())
    item = Dataset()
    item.PatientID = "REAL-ID-1"
    nested.OtherPatientIDsSequence = Sequence([item])
    nested.add_new(0x00190010, "LO", "A VENDOR")
    blocked = {finding.location for finding in guard_dataset(nested)}
    assert blocked == {
        "OtherPatientIDsSequence",
        "OtherPatientIDsSequence[0].PatientID",
        "(0019,0010)",
    }


def test_guard_file_reads_headers_and_reports_unreadable_files(tmp_path: Path) -> None:
    findings = guard_file(bundled_file("CT_small.dcm"))
    assert {"PatientName", "InstitutionName", "private"} <= {f.keyword for f in findings}
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("Patient: PLANTNAME^ALICE\n")
    with pytest.raises(CaseProblem) as caught:
        guard_file(not_dicom)
    assert caught.value.path == str(not_dicom)
    assert "PLANTNAME" not in str(caught.value)
