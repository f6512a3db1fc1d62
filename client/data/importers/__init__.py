"""Importers: describe a DICOM export, NIfTI folder, MSD, nnU-Net v2 or BIDS data set as a manifest
(`consortia data init`).

The modules, one concept each:

- ``bids``: Describe a BIDS data set (`sub-*/[ses-*/]anat/*.nii.gz`, masks under
  `derivatives/*/`) as manifest cases, with the subject as the patient.
- ``dicom_export``: Describe a DICOM export of any depth (a PACS export, patient/study/series
  folders) as manifest cases: one case per image series, labelled by the DICOM SEG or RTSTRUCT
  that references it (ReferencedSeriesInstanceUID).
- ``draft``: A manifest drafted by an importer: the cases found, what was left out and why, and
  the commented TOML file `consortia data init` writes from it.
- ``msd``: Describe a Medical Segmentation Decathlon task (`dataset.json`, `imagesTr/`,
  `labelsTr/`) as manifest cases.
- ``nifti_folder``: Describe a folder of NIfTI images and masks as manifest cases: `images/` and
  `labels/` (or `masks/`) hold files of the same relative path, at any depth.
- ``nnunet``: Describe an nnU-Net v2 raw data set (`dataset.json` with `channel_names`,
  `imagesTr/CASE_XXXX.nii.gz` per channel, `labelsTr/CASE.nii.gz`) as manifest cases.
- ``scanner``: `consortia data init SRC`: tell which layout a source folder has and run its
  importer.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.data.importers.bids import (
        import_bids as import_bids,
    )
    from consortia.client.data.importers.dicom_export import (
        import_dicom_export as import_dicom_export,
    )
    from consortia.client.data.importers.dicom_export import (
        looks_like_dicom as looks_like_dicom,
    )
    from consortia.client.data.importers.draft import (
        Draft as Draft,
    )
    from consortia.client.data.importers.draft import (
        DraftCase as DraftCase,
    )
    from consortia.client.data.importers.draft import (
        ImportProblem as ImportProblem,
    )
    from consortia.client.data.importers.draft import (
        case_id as case_id,
    )
    from consortia.client.data.importers.draft import (
        dataset_name as dataset_name,
    )
    from consortia.client.data.importers.draft import (
        manifest_text as manifest_text,
    )
    from consortia.client.data.importers.draft import (
        padded_size as padded_size,
    )
    from consortia.client.data.importers.draft import (
        write_manifest as write_manifest,
    )
    from consortia.client.data.importers.msd import (
        import_msd as import_msd,
    )
    from consortia.client.data.importers.msd import (
        read_dataset_json as read_dataset_json,
    )
    from consortia.client.data.importers.nifti_folder import (
        LABEL_FOLDERS as LABEL_FOLDERS,
    )
    from consortia.client.data.importers.nifti_folder import (
        import_nifti_folder as import_nifti_folder,
    )
    from consortia.client.data.importers.nifti_folder import (
        is_nifti as is_nifti,
    )
    from consortia.client.data.importers.nifti_folder import (
        nifti_shape as nifti_shape,
    )
    from consortia.client.data.importers.nnunet import (
        import_nnunet as import_nnunet,
    )
    from consortia.client.data.importers.scanner import (
        LAYOUTS as LAYOUTS,
    )
    from consortia.client.data.importers.scanner import (
        Layout as Layout,
    )
    from consortia.client.data.importers.scanner import (
        detect_layout as detect_layout,
    )
    from consortia.client.data.importers.scanner import (
        import_source as import_source,
    )

__all__ = [
    "LABEL_FOLDERS",
    "LAYOUTS",
    "Draft",
    "DraftCase",
    "ImportProblem",
    "Layout",
    "case_id",
    "dataset_name",
    "detect_layout",
    "import_bids",
    "import_dicom_export",
    "import_msd",
    "import_nifti_folder",
    "import_nnunet",
    "import_source",
    "is_nifti",
    "looks_like_dicom",
    "manifest_text",
    "nifti_shape",
    "padded_size",
    "read_dataset_json",
    "write_manifest",
]

_EXPORTS = {
    "Draft": "draft",
    "DraftCase": "draft",
    "ImportProblem": "draft",
    "LABEL_FOLDERS": "nifti_folder",
    "LAYOUTS": "scanner",
    "Layout": "scanner",
    "case_id": "draft",
    "dataset_name": "draft",
    "detect_layout": "scanner",
    "import_bids": "bids",
    "import_dicom_export": "dicom_export",
    "import_msd": "msd",
    "import_nifti_folder": "nifti_folder",
    "import_nnunet": "nnunet",
    "import_source": "scanner",
    "is_nifti": "nifti_folder",
    "looks_like_dicom": "dicom_export",
    "manifest_text": "draft",
    "nifti_shape": "nifti_folder",
    "padded_size": "draft",
    "read_dataset_json": "msd",
    "write_manifest": "draft",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
