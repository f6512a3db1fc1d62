"""Grad-CAM saliency maps computed at a site, and their release.

The modules, one concept each:

- ``gradcam``: Grad-CAM saliency maps of a (global) model on a few of a site's images, computed
  at the site.
- ``release``: Saliency maps of the final global model at a held-out site (`[saliency]` of the
  site config): drawn during the final evaluation, kept in the node's state folder as
  `<state>/saliency/<run>/case-NN.png` (`<run>`: the server's run folder name), and put in the
  reply only where the site allows it (`share = true`).
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.saliency.gradcam import (
        MIN_FEATURE_SIZE as MIN_FEATURE_SIZE,
    )
    from consortia.client.saliency.gradcam import (
        RESNET_STAGES as RESNET_STAGES,
    )
    from consortia.client.saliency.gradcam import (
        UNET_LAYER as UNET_LAYER,
    )
    from consortia.client.saliency.gradcam import (
        SaliencyMap as SaliencyMap,
    )
    from consortia.client.saliency.gradcam import (
        SpatialMeanLogits as SpatialMeanLogits,
    )
    from consortia.client.saliency.gradcam import (
        default_layer as default_layer,
    )
    from consortia.client.saliency.gradcam import (
        saliency_maps as saliency_maps,
    )
    from consortia.client.saliency.gradcam import (
        select_cases as select_cases,
    )
    from consortia.client.saliency.gradcam import (
        write_saliency_png as write_saliency_png,
    )
    from consortia.client.saliency.release import (
        SALIENCY_DIR as SALIENCY_DIR,
    )
    from consortia.client.saliency.release import (
        SALIENCY_WRITTEN as SALIENCY_WRITTEN,
    )
    from consortia.client.saliency.release import (
        saliency_name as saliency_name,
    )
    from consortia.client.saliency.release import (
        saliency_record as saliency_record,
    )
    from consortia.client.saliency.release import (
        write_final_saliency as write_final_saliency,
    )

__all__ = [
    "MIN_FEATURE_SIZE",
    "RESNET_STAGES",
    "SALIENCY_DIR",
    "SALIENCY_WRITTEN",
    "UNET_LAYER",
    "SaliencyMap",
    "SpatialMeanLogits",
    "default_layer",
    "saliency_maps",
    "saliency_name",
    "saliency_record",
    "select_cases",
    "write_final_saliency",
    "write_saliency_png",
]

_EXPORTS = {
    "MIN_FEATURE_SIZE": "gradcam",
    "RESNET_STAGES": "gradcam",
    "SALIENCY_DIR": "release",
    "SALIENCY_WRITTEN": "release",
    "SaliencyMap": "gradcam",
    "SpatialMeanLogits": "gradcam",
    "UNET_LAYER": "gradcam",
    "default_layer": "gradcam",
    "saliency_maps": "gradcam",
    "saliency_name": "release",
    "saliency_record": "release",
    "select_cases": "gradcam",
    "write_final_saliency": "release",
    "write_saliency_png": "gradcam",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
