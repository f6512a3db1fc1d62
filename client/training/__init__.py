"""Local training and evaluation at a site: the trainer and data augmentation.

The modules, one concept each:

- ``augment``: Data augmentation of a training batch, with MONAI's random transforms.
- ``trainer``: Local training and evaluation at a site: plain PyTorch on the site's arrays.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.training.augment import (
        BatchAugmenter as BatchAugmenter,
    )
    from consortia.client.training.trainer import (
        EvalResult as EvalResult,
    )
    from consortia.client.training.trainer import (
        ProximalTerm as ProximalTerm,
    )
    from consortia.client.training.trainer import (
        RoundRecipe as RoundRecipe,
    )
    from consortia.client.training.trainer import (
        TrainResult as TrainResult,
    )
    from consortia.client.training.trainer import (
        evaluate_local as evaluate_local,
    )
    from consortia.client.training.trainer import (
        loss_function as loss_function,
    )
    from consortia.client.training.trainer import (
        normalize_images as normalize_images,
    )
    from consortia.client.training.trainer import (
        prewarm as prewarm,
    )
    from consortia.client.training.trainer import (
        train_local as train_local,
    )

__all__ = [
    "BatchAugmenter",
    "EvalResult",
    "ProximalTerm",
    "RoundRecipe",
    "TrainResult",
    "evaluate_local",
    "loss_function",
    "normalize_images",
    "prewarm",
    "train_local",
]

_EXPORTS = {
    "BatchAugmenter": "augment",
    "EvalResult": "trainer",
    "ProximalTerm": "trainer",
    "RoundRecipe": "trainer",
    "TrainResult": "trainer",
    "evaluate_local": "trainer",
    "loss_function": "trainer",
    "normalize_images": "trainer",
    "prewarm": "trainer",
    "train_local": "trainer",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
