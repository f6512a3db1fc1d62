"""DICOM at the site: series and SEG readers, header checks, the PHI guard and de-identification.

The modules, one concept each:

- ``checks``: Checks on one DICOM file before its pixels are decoded: header values per frame,
  and pixel data that is present, decodable and complete.
- ``confidentiality_profile``: DICOM PS3.15 Annex E Basic Application Level Confidentiality
  Profile: which attributes identify a person and what the profile does with each.
- ``deidentify``: Write a de-identified copy of a DICOM folder (PS3.15 Annex E Basic Profile).
- ``folder_check``: `consortia data check FOLDER`: a folder of DICOM files checked as it is,
  without a manifest.
- ``labels``: Read a DICOM SEG (with highdicom) as an integer label map on its image series'
  grid.
- ``phi``: PHI guard: find identifying DICOM attributes before a node trains on a data set.
- ``rtstruct``: Read a DICOM RTSTRUCT as an integer label map on its image series' grid.
- ``series``: Read a DICOM series (CT, MR, ...) into an ImageVolume, with the checks a site
  needs.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.data.dicom.checks import (
        CODECS_HINT as CODECS_HINT,
    )
    from consortia.client.data.dicom.checks import (
        FrameHeader as FrameHeader,
    )
    from consortia.client.data.dicom.checks import (
        check_pixel_data as check_pixel_data,
    )
    from consortia.client.data.dicom.checks import (
        first_present as first_present,
    )
    from consortia.client.data.dicom.checks import (
        frame_headers as frame_headers,
    )
    from consortia.client.data.dicom.checks import (
        header_number as header_number,
    )
    from consortia.client.data.dicom.checks import (
        missing_codec as missing_codec,
    )
    from consortia.client.data.dicom.checks import (
        transfer_syntax as transfer_syntax,
    )
    from consortia.client.data.dicom.checks import (
        ts_label as ts_label,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        BASIC_PROFILE as BASIC_PROFILE,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        BASIC_PROFILE_CODE as BASIC_PROFILE_CODE,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        DEIDENTIFICATION_METHOD as DEIDENTIFICATION_METHOD,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        DUMMY_TEXT as DUMMY_TEXT,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        FILE_META_KEPT as FILE_META_KEPT,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        PROFILE_EDITION as PROFILE_EDITION,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        PSEUDONYM_PREFIX as PSEUDONYM_PREFIX,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        Step as Step,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        attribute_name as attribute_name,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        dummy_value as dummy_value,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        is_placeholder as is_placeholder,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        is_pseudonym as is_pseudonym,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        profile_action as profile_action,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        step_for as step_for,
    )
    from consortia.client.data.dicom.confidentiality_profile import (
        tag_text as tag_text,
    )
    from consortia.client.data.dicom.deidentify import (
        DeidentifyReport as DeidentifyReport,
    )
    from consortia.client.data.dicom.deidentify import (
        UidMap as UidMap,
    )
    from consortia.client.data.dicom.deidentify import (
        deidentify_dataset as deidentify_dataset,
    )
    from consortia.client.data.dicom.deidentify import (
        deidentify_tree as deidentify_tree,
    )
    from consortia.client.data.dicom.folder_check import (
        check_dicom_folder as check_dicom_folder,
    )
    from consortia.client.data.dicom.labels import (
        read_seg_label as read_seg_label,
    )
    from consortia.client.data.dicom.phi import (
        PhiFinding as PhiFinding,
    )
    from consortia.client.data.dicom.phi import (
        find_identifiers as find_identifiers,
    )
    from consortia.client.data.dicom.phi import (
        guard_dataset as guard_dataset,
    )
    from consortia.client.data.dicom.phi import (
        guard_file as guard_file,
    )
    from consortia.client.data.dicom.phi import (
        is_deidentified as is_deidentified,
    )
    from consortia.client.data.dicom.rtstruct import (
        read_rtstruct_label as read_rtstruct_label,
    )
    from consortia.client.data.dicom.rtstruct import (
        referenced_series_uids as referenced_series_uids,
    )
    from consortia.client.data.dicom.rtstruct import (
        roi_names as roi_names,
    )
    from consortia.client.data.dicom.series import (
        ANNOTATION_MODALITIES as ANNOTATION_MODALITIES,
    )
    from consortia.client.data.dicom.series import (
        DicomScan as DicomScan,
    )
    from consortia.client.data.dicom.series import (
        DicomSeries as DicomSeries,
    )
    from consortia.client.data.dicom.series import (
        combined_problem as combined_problem,
    )
    from consortia.client.data.dicom.series import (
        read_dicom_folder as read_dicom_folder,
    )
    from consortia.client.data.dicom.series import (
        read_dicom_series as read_dicom_series,
    )
    from consortia.client.data.dicom.series import (
        scan_dicom_folder as scan_dicom_folder,
    )

__all__ = [
    "ANNOTATION_MODALITIES",
    "BASIC_PROFILE",
    "BASIC_PROFILE_CODE",
    "CODECS_HINT",
    "DEIDENTIFICATION_METHOD",
    "DUMMY_TEXT",
    "FILE_META_KEPT",
    "PROFILE_EDITION",
    "PSEUDONYM_PREFIX",
    "DeidentifyReport",
    "DicomScan",
    "DicomSeries",
    "FrameHeader",
    "PhiFinding",
    "Step",
    "UidMap",
    "attribute_name",
    "check_dicom_folder",
    "check_pixel_data",
    "combined_problem",
    "deidentify_dataset",
    "deidentify_tree",
    "dummy_value",
    "find_identifiers",
    "first_present",
    "frame_headers",
    "guard_dataset",
    "guard_file",
    "header_number",
    "is_deidentified",
    "is_placeholder",
    "is_pseudonym",
    "missing_codec",
    "profile_action",
    "read_dicom_folder",
    "read_dicom_series",
    "read_rtstruct_label",
    "read_seg_label",
    "referenced_series_uids",
    "roi_names",
    "scan_dicom_folder",
    "step_for",
    "tag_text",
    "transfer_syntax",
    "ts_label",
]

_EXPORTS = {
    "ANNOTATION_MODALITIES": "series",
    "BASIC_PROFILE": "confidentiality_profile",
    "BASIC_PROFILE_CODE": "confidentiality_profile",
    "CODECS_HINT": "checks",
    "DEIDENTIFICATION_METHOD": "confidentiality_profile",
    "DUMMY_TEXT": "confidentiality_profile",
    "DeidentifyReport": "deidentify",
    "DicomScan": "series",
    "DicomSeries": "series",
    "FILE_META_KEPT": "confidentiality_profile",
    "FrameHeader": "checks",
    "PROFILE_EDITION": "confidentiality_profile",
    "PSEUDONYM_PREFIX": "confidentiality_profile",
    "PhiFinding": "phi",
    "Step": "confidentiality_profile",
    "UidMap": "deidentify",
    "attribute_name": "confidentiality_profile",
    "check_dicom_folder": "folder_check",
    "check_pixel_data": "checks",
    "combined_problem": "series",
    "deidentify_dataset": "deidentify",
    "deidentify_tree": "deidentify",
    "dummy_value": "confidentiality_profile",
    "find_identifiers": "phi",
    "first_present": "checks",
    "frame_headers": "checks",
    "guard_dataset": "phi",
    "guard_file": "phi",
    "header_number": "checks",
    "is_deidentified": "phi",
    "is_placeholder": "confidentiality_profile",
    "is_pseudonym": "confidentiality_profile",
    "missing_codec": "checks",
    "profile_action": "confidentiality_profile",
    "read_dicom_folder": "series",
    "read_dicom_series": "series",
    "read_rtstruct_label": "rtstruct",
    "read_seg_label": "labels",
    "referenced_series_uids": "rtstruct",
    "roi_names": "rtstruct",
    "scan_dicom_folder": "series",
    "step_for": "confidentiality_profile",
    "tag_text": "confidentiality_profile",
    "transfer_syntax": "checks",
    "ts_label": "checks",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
