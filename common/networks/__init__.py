"""The models (MONAI networks), their weights on the wire and the compute device.

The modules, one concept each:

- ``device``: Pick the compute device and the mixed-precision mode that is safe on it.
- ``models``: The one model factory shared by the server and every site.
- ``weights``: Model weights on the wire: one flat float32 vector plus a layout both sides
  derive.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.common.networks.device import (
        DEVICE_ENV as DEVICE_ENV,
    )
    from consortia.common.networks.device import (
        autocast as autocast,
    )
    from consortia.common.networks.device import (
        select_device as select_device,
    )
    from consortia.common.networks.models import (
        RESNET_LAYERS as RESNET_LAYERS,
    )
    from consortia.common.networks.models import (
        Architecture as Architecture,
    )
    from consortia.common.networks.models import (
        ModelSettings as ModelSettings,
    )
    from consortia.common.networks.models import (
        NoInplaceResNetBlock as NoInplaceResNetBlock,
    )
    from consortia.common.networks.models import (
        NormKind as NormKind,
    )
    from consortia.common.networks.models import (
        build_model as build_model,
    )
    from consortia.common.networks.models import (
        model_fingerprint as model_fingerprint,
    )
    from consortia.common.networks.weights import (
        WeightLayout as WeightLayout,
    )
    from consortia.common.networks.weights import (
        WeightLayoutError as WeightLayoutError,
    )

__all__ = [
    "DEVICE_ENV",
    "RESNET_LAYERS",
    "Architecture",
    "ModelSettings",
    "NoInplaceResNetBlock",
    "NormKind",
    "WeightLayout",
    "WeightLayoutError",
    "autocast",
    "build_model",
    "model_fingerprint",
    "select_device",
]

_EXPORTS = {
    "Architecture": "models",
    "DEVICE_ENV": "device",
    "ModelSettings": "models",
    "NoInplaceResNetBlock": "models",
    "NormKind": "models",
    "RESNET_LAYERS": "models",
    "WeightLayout": "weights",
    "WeightLayoutError": "weights",
    "autocast": "device",
    "build_model": "models",
    "model_fingerprint": "models",
    "select_device": "device",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
