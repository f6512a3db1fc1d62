"""The models (MONAI networks), their weights on the wire and the compute device.

The modules, one concept each:

- ``device``: Pick the compute device and the mixed-precision mode that is safe on it.
- ``models``: The one model factory shared by the server and every site.
- ``warm_start``: The approved warm start (`[run.model.init]`): load a checkpoint or MONAI
  bundle, check that it fits the architecture and hashes to the approved SHA-256, and check
  round 1 at a site.
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
    from consortia.common.networks.warm_start import (
        BUNDLE_WEIGHTS as BUNDLE_WEIGHTS,
    )
    from consortia.common.networks.warm_start import (
        WARM_START as WARM_START,
    )
    from consortia.common.networks.warm_start import (
        WarmStart as WarmStart,
    )
    from consortia.common.networks.warm_start import (
        WarmStartError as WarmStartError,
    )
    from consortia.common.networks.warm_start import (
        WarmStartMismatchError as WarmStartMismatchError,
    )
    from consortia.common.networks.warm_start import (
        check_round_start as check_round_start,
    )
    from consortia.common.networks.warm_start import (
        fit_weights as fit_weights,
    )
    from consortia.common.networks.warm_start import (
        layout_of as layout_of,
    )
    from consortia.common.networks.warm_start import (
        load_warm_start as load_warm_start,
    )
    from consortia.common.networks.warm_start import (
        read_weights as read_weights,
    )
    from consortia.common.networks.warm_start import (
        save_weights as save_weights,
    )
    from consortia.common.networks.warm_start import (
        weights_sha256 as weights_sha256,
    )
    from consortia.common.networks.weights import (
        WeightLayout as WeightLayout,
    )
    from consortia.common.networks.weights import (
        WeightLayoutError as WeightLayoutError,
    )

__all__ = [
    "BUNDLE_WEIGHTS",
    "DEVICE_ENV",
    "RESNET_LAYERS",
    "WARM_START",
    "Architecture",
    "ModelSettings",
    "NoInplaceResNetBlock",
    "NormKind",
    "WarmStart",
    "WarmStartError",
    "WarmStartMismatchError",
    "WeightLayout",
    "WeightLayoutError",
    "autocast",
    "build_model",
    "check_round_start",
    "fit_weights",
    "layout_of",
    "load_warm_start",
    "model_fingerprint",
    "read_weights",
    "save_weights",
    "select_device",
    "weights_sha256",
]

_EXPORTS = {
    "Architecture": "models",
    "BUNDLE_WEIGHTS": "warm_start",
    "DEVICE_ENV": "device",
    "ModelSettings": "models",
    "NoInplaceResNetBlock": "models",
    "NormKind": "models",
    "RESNET_LAYERS": "models",
    "WARM_START": "warm_start",
    "WarmStart": "warm_start",
    "WarmStartError": "warm_start",
    "WarmStartMismatchError": "warm_start",
    "WeightLayout": "weights",
    "WeightLayoutError": "weights",
    "autocast": "device",
    "build_model": "models",
    "check_round_start": "warm_start",
    "fit_weights": "warm_start",
    "layout_of": "warm_start",
    "load_warm_start": "warm_start",
    "model_fingerprint": "models",
    "read_weights": "warm_start",
    "save_weights": "warm_start",
    "select_device": "device",
    "weights_sha256": "warm_start",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
