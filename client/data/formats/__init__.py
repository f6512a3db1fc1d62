"""Image formats and geometry: NIfTI, raster images and the ImageVolume every reader returns.

The modules, one concept each:

- ``geometry``: Voxel grids in patient space: put a label map on the voxel grid of its image.
- ``nifti``: Read NIfTI images and label maps (with nibabel) in the ImageVolume conventions.
- ``raster``: Readers for 2D raster images: PNG files and cases of an npz archive in MedMNIST
  layout.
- ``volume``: One image as every reader returns it: voxels plus the geometry needed to align
  labels.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.data.formats.geometry import (
        DIRECTION_TOLERANCE as DIRECTION_TOLERANCE,
    )
    from consortia.client.data.formats.geometry import (
        LPS_FROM_RAS as LPS_FROM_RAS,
    )
    from consortia.client.data.formats.geometry import (
        ORIENTATION_TOLERANCE as ORIENTATION_TOLERANCE,
    )
    from consortia.client.data.formats.geometry import (
        ORIGIN_TOLERANCE_VOXELS as ORIGIN_TOLERANCE_VOXELS,
    )
    from consortia.client.data.formats.geometry import (
        SLICE_TOLERANCE_MM as SLICE_TOLERANCE_MM,
    )
    from consortia.client.data.formats.geometry import (
        SLICE_TOLERANCE_RELATIVE as SLICE_TOLERANCE_RELATIVE,
    )
    from consortia.client.data.formats.geometry import (
        SPACING_TOLERANCE as SPACING_TOLERANCE,
    )
    from consortia.client.data.formats.geometry import (
        StackGeometry as StackGeometry,
    )
    from consortia.client.data.formats.geometry import (
        align_to_grid as align_to_grid,
    )
    from consortia.client.data.formats.geometry import (
        grid_affine as grid_affine,
    )
    from consortia.client.data.formats.geometry import (
        stack_geometry as stack_geometry,
    )
    from consortia.client.data.formats.nifti import (
        read_nifti as read_nifti,
    )
    from consortia.client.data.formats.nifti import (
        read_nifti_label as read_nifti_label,
    )
    from consortia.client.data.formats.raster import (
        NpzArchive as NpzArchive,
    )
    from consortia.client.data.formats.raster import (
        read_png as read_png,
    )
    from consortia.client.data.formats.raster import (
        read_png_label as read_png_label,
    )
    from consortia.client.data.formats.volume import (
        CaseProblem as CaseProblem,
    )
    from consortia.client.data.formats.volume import (
        ImageVolume as ImageVolume,
    )

__all__ = [
    "DIRECTION_TOLERANCE",
    "LPS_FROM_RAS",
    "ORIENTATION_TOLERANCE",
    "ORIGIN_TOLERANCE_VOXELS",
    "SLICE_TOLERANCE_MM",
    "SLICE_TOLERANCE_RELATIVE",
    "SPACING_TOLERANCE",
    "CaseProblem",
    "ImageVolume",
    "NpzArchive",
    "StackGeometry",
    "align_to_grid",
    "grid_affine",
    "read_nifti",
    "read_nifti_label",
    "read_png",
    "read_png_label",
    "stack_geometry",
]

_EXPORTS = {
    "CaseProblem": "volume",
    "DIRECTION_TOLERANCE": "geometry",
    "ImageVolume": "volume",
    "LPS_FROM_RAS": "geometry",
    "NpzArchive": "raster",
    "ORIENTATION_TOLERANCE": "geometry",
    "ORIGIN_TOLERANCE_VOXELS": "geometry",
    "SLICE_TOLERANCE_MM": "geometry",
    "SLICE_TOLERANCE_RELATIVE": "geometry",
    "SPACING_TOLERANCE": "geometry",
    "StackGeometry": "geometry",
    "align_to_grid": "geometry",
    "grid_affine": "geometry",
    "read_nifti": "nifti",
    "read_nifti_label": "nifti",
    "read_png": "raster",
    "read_png_label": "raster",
    "stack_geometry": "geometry",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
