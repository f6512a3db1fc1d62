"""Local training and evaluation at a site: the trainer and data augmentation.

The modules, one concept each:

- ``augment``: Data augmentation of a training batch, with MONAI's random transforms.
- ``classification_recipe``: The classification recipe at a site: spatial augmentation for
  X-ray-like images and a class-weighted loss whose weights come from the site's own label
  counts.
- ``pretrain``: A study's warm start trained on public data (`consortia model pretrain`): the
  run's model trained centrally, with the site's own trainer, on a data set that no site
  contributes, saved with the weights' SHA-256 that `[run.model.init]` approves.
- ``pretrain_cli``: `consortia model pretrain | hash`: a study's warm start, trained on public
  data or hashed from an existing checkpoint or MONAI bundle, for `[run.model.init]`.
- ``trainer``: Local training and evaluation at a site: plain PyTorch on the site's arrays.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.training.augment import (
        BatchAugmenter as BatchAugmenter,
    )
    from consortia.client.training.classification_recipe import (
        AFFINE_PROBABILITY as AFFINE_PROBABILITY,
    )
    from consortia.client.training.classification_recipe import (
        MAX_ROTATION_DEGREES as MAX_ROTATION_DEGREES,
    )
    from consortia.client.training.classification_recipe import (
        MAX_SHIFT_PIXELS as MAX_SHIFT_PIXELS,
    )
    from consortia.client.training.classification_recipe import (
        SCALE_RANGE as SCALE_RANGE,
    )
    from consortia.client.training.classification_recipe import (
        ClassificationAugmenter as ClassificationAugmenter,
    )
    from consortia.client.training.classification_recipe import (
        ClassWeightedCrossEntropy as ClassWeightedCrossEntropy,
    )
    from consortia.client.training.classification_recipe import (
        balanced_class_weights as balanced_class_weights,
    )
    from consortia.client.training.classification_recipe import (
        class_weighted_loss as class_weighted_loss,
    )
    from consortia.client.training.pretrain import (
        EVALUATION_SPLITS as EVALUATION_SPLITS,
    )
    from consortia.client.training.pretrain import (
        Pretrained as Pretrained,
    )
    from consortia.client.training.pretrain import (
        evaluate_model as evaluate_model,
    )
    from consortia.client.training.pretrain import (
        warm_run_config as warm_run_config,
    )
    from consortia.client.training.pretrain_cli import (
        model_app as model_app,
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
    "AFFINE_PROBABILITY",
    "EVALUATION_SPLITS",
    "MAX_ROTATION_DEGREES",
    "MAX_SHIFT_PIXELS",
    "SCALE_RANGE",
    "BatchAugmenter",
    "ClassWeightedCrossEntropy",
    "ClassificationAugmenter",
    "EvalResult",
    "Pretrained",
    "ProximalTerm",
    "RoundRecipe",
    "TrainResult",
    "balanced_class_weights",
    "class_weighted_loss",
    "evaluate_local",
    "evaluate_model",
    "loss_function",
    "model_app",
    "normalize_images",
    "prewarm",
    "train_local",
    "warm_run_config",
]

_EXPORTS = {
    "AFFINE_PROBABILITY": "classification_recipe",
    "BatchAugmenter": "augment",
    "ClassWeightedCrossEntropy": "classification_recipe",
    "ClassificationAugmenter": "classification_recipe",
    "EVALUATION_SPLITS": "pretrain",
    "EvalResult": "trainer",
    "MAX_ROTATION_DEGREES": "classification_recipe",
    "MAX_SHIFT_PIXELS": "classification_recipe",
    "Pretrained": "pretrain",
    "ProximalTerm": "trainer",
    "RoundRecipe": "trainer",
    "SCALE_RANGE": "classification_recipe",
    "TrainResult": "trainer",
    "balanced_class_weights": "classification_recipe",
    "class_weighted_loss": "classification_recipe",
    "evaluate_local": "trainer",
    "evaluate_model": "pretrain",
    "loss_function": "trainer",
    "model_app": "pretrain_cli",
    "normalize_images": "trainer",
    "prewarm": "trainer",
    "train_local": "trainer",
    "warm_run_config": "pretrain",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
