"""SYNTHETIC demo images for the built-in demo federation.

The modules, one concept each:

- ``acquisition``: How each simulated site's scanner distorts the clean SYNTHETIC demo images.
- ``data``: SYNTHETIC demo images for the built-in Consortia demo federation.
- ``synthetic_images``: Drawing the clean SYNTHETIC demo images: body, organ, vessels and
  lesions.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.common.demo.acquisition import (
        AcquisitionProfile as AcquisitionProfile,
    )
    from consortia.common.demo.acquisition import (
        apply_profile as apply_profile,
    )
    from consortia.common.demo.acquisition import (
        site_profile as site_profile,
    )
    from consortia.common.demo.data import (
        DEMO_DESCRIPTION as DEMO_DESCRIPTION,
    )
    from consortia.common.demo.data import (
        KEY_DESCRIPTION as KEY_DESCRIPTION,
    )
    from consortia.common.demo.data import (
        KEY_SITE_INDEX as KEY_SITE_INDEX,
    )
    from consortia.common.demo.data import (
        KEY_SYNTHETIC as KEY_SYNTHETIC,
    )
    from consortia.common.demo.data import (
        KEY_TEST_IMAGES as KEY_TEST_IMAGES,
    )
    from consortia.common.demo.data import (
        KEY_TEST_LABELS as KEY_TEST_LABELS,
    )
    from consortia.common.demo.data import (
        KEY_TEST_MASKS as KEY_TEST_MASKS,
    )
    from consortia.common.demo.data import (
        KEY_TRAIN_IMAGES as KEY_TRAIN_IMAGES,
    )
    from consortia.common.demo.data import (
        KEY_TRAIN_LABELS as KEY_TRAIN_LABELS,
    )
    from consortia.common.demo.data import (
        KEY_TRAIN_MASKS as KEY_TRAIN_MASKS,
    )
    from consortia.common.demo.data import (
        SPLIT_TEST as SPLIT_TEST,
    )
    from consortia.common.demo.data import (
        SPLIT_TRAIN as SPLIT_TRAIN,
    )
    from consortia.common.demo.data import (
        DemoDataSettings as DemoDataSettings,
    )
    from consortia.common.demo.data import (
        SyntheticCases as SyntheticCases,
    )
    from consortia.common.demo.data import (
        generate_cases as generate_cases,
    )
    from consortia.common.demo.data import (
        generate_site as generate_site,
    )
    from consortia.common.demo.data import (
        site_filename as site_filename,
    )
    from consortia.common.demo.data import (
        write_demo_federation as write_demo_federation,
    )
    from consortia.common.demo.data import (
        write_site_npz as write_site_npz,
    )
    from consortia.common.demo.synthetic_images import (
        draw_clean as draw_clean,
    )

__all__ = [
    "DEMO_DESCRIPTION",
    "KEY_DESCRIPTION",
    "KEY_SITE_INDEX",
    "KEY_SYNTHETIC",
    "KEY_TEST_IMAGES",
    "KEY_TEST_LABELS",
    "KEY_TEST_MASKS",
    "KEY_TRAIN_IMAGES",
    "KEY_TRAIN_LABELS",
    "KEY_TRAIN_MASKS",
    "SPLIT_TEST",
    "SPLIT_TRAIN",
    "AcquisitionProfile",
    "DemoDataSettings",
    "SyntheticCases",
    "apply_profile",
    "draw_clean",
    "generate_cases",
    "generate_site",
    "site_filename",
    "site_profile",
    "write_demo_federation",
    "write_site_npz",
]

_EXPORTS = {
    "AcquisitionProfile": "acquisition",
    "DEMO_DESCRIPTION": "data",
    "DemoDataSettings": "data",
    "KEY_DESCRIPTION": "data",
    "KEY_SITE_INDEX": "data",
    "KEY_SYNTHETIC": "data",
    "KEY_TEST_IMAGES": "data",
    "KEY_TEST_LABELS": "data",
    "KEY_TEST_MASKS": "data",
    "KEY_TRAIN_IMAGES": "data",
    "KEY_TRAIN_LABELS": "data",
    "KEY_TRAIN_MASKS": "data",
    "SPLIT_TEST": "data",
    "SPLIT_TRAIN": "data",
    "SyntheticCases": "data",
    "apply_profile": "acquisition",
    "draw_clean": "synthetic_images",
    "generate_cases": "data",
    "generate_site": "data",
    "site_filename": "data",
    "site_profile": "acquisition",
    "write_demo_federation": "data",
    "write_site_npz": "data",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
