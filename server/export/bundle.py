"""The MONAI bundle form of an exported model: `configs/metadata.json`,
`configs/inference.json` and `models/model.pt`, read by MONAI's bundle tools.

The network is built by Consortia's model factory, so reading the bundle needs Consortia
installed; MONAI's `evaluator` (the `run` entry) also needs pytorch-ignite.

`inference.json` is a MONAI inference workflow (`python -m monai.bundle run --config_file
configs/inference.json --dataset_dir DIR`): it builds the network with Consortia's model
factory (`network_def`), reads NIfTI (or PNG) images with MONAI's loaders, puts their axes
in Consortia's order (channels, then D, H, W), applies the study's `[preprocess]` size
(centred pad/crop or resize), z-scores each image and channel, runs the sliding-window
inferer and writes masks mapped back to each input's grid (`Invertd`), or a CSV of class
scores. MONAI's z-score divides by N, the trainer's by N - 1: `consortia predict` applies
the trainer's exactly, the workflow agrees to that rounding.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Final

from consortia.common.config.model_settings import ModelSettings

__all__ = ["BUNDLE_INFERENCE", "BUNDLE_METADATA", "BUNDLE_WEIGHTS", "bundle_configs"]

BUNDLE_METADATA: Final = "configs/metadata.json"
BUNDLE_INFERENCE: Final = "configs/inference.json"
BUNDLE_WEIGHTS: Final = "models/model.pt"
_METADATA_SCHEMA: Final = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20220324.json"
)


def _network_def(model: dict[str, Any]) -> dict[str, Any]:
    """The model factory's call; only the architecture's settings (`ModelSettings`), not
    the run's other `[run.model]` keys (a warm start's `init`)."""
    names = {item.name for item in fields(ModelSettings)}
    arguments = {key: value for key, value in model.items() if key in names}
    return {
        "_target_": "consortia.common.networks.models.build_model",
        "settings": {
            "_target_": "consortia.common.config.model_settings.ModelSettings",
            **arguments,
        },
    }


def _plan_steps(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """`[run.plan]` as MONAI transforms (`consortia.client.data.preprocess.apply_plan`)."""
    steps: list[dict[str, Any]] = []
    if len(plan["spatial_size"]) == 3:
        steps.append({"_target_": "Orientationd", "keys": "image", "axcodes": plan["orientation"]})
    steps.append(
        {
            "_target_": "Spacingd",
            "keys": "image",
            "pixdim": plan["target_spacing"],
            "padding_mode": "zeros",
        }
    )
    if plan.get("crop_foreground", True):
        steps.append(
            {
                "_target_": "CropForegroundd",
                "keys": "image",
                "source_key": "image",
                "select_fn": "$lambda x: x != 0",
                "allow_smaller": True,
            }
        )
    if plan.get("modality") == "CT":
        low, high = plan["ct_clip"]
        steps += [
            {
                "_target_": "ThresholdIntensityd",
                "keys": "image",
                "threshold": high,
                "above": False,
                "cval": high,
            },
            {
                "_target_": "ThresholdIntensityd",
                "keys": "image",
                "threshold": low,
                "above": True,
                "cval": low,
            },
            {
                "_target_": "NormalizeIntensityd",
                "keys": "image",
                "subtrahend": plan.get("ct_mean", 0.0),
                "divisor": plan.get("ct_std", 1.0),
            },
        ]
    else:
        steps.append(
            {
                "_target_": "NormalizeIntensityd",
                "keys": "image",
                "nonzero": True,
                "channel_wise": True,
            }
        )
    steps.append({"_target_": "SpatialPadd", "keys": "image", "spatial_size": plan["spatial_size"]})
    return steps


def _preprocessing(card: dict[str, Any]) -> dict[str, Any]:
    dims = int(card["model"].get("spatial_dims", 2))
    plan = card["preprocessing"].get("plan")
    dataset = card["preprocessing"].get("dataset") or {}
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "ensure_channel_first": True},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]
    if plan is None or dims == 2:
        # MONAI reads (C, i, j[, k]); Consortia's models take (C, [D,] H, W) (a 3D plan
        # orients the axes itself).
        steps.append(
            {"_target_": "Transposed", "keys": "image", "indices": [0, *range(dims, 0, -1)]}
        )
    if plan is not None:
        steps += _plan_steps(plan)
    elif dataset.get("resize", "pad-crop") == "pad-crop":
        steps.append(
            {
                "_target_": "ResizeWithPadOrCropd",
                "keys": "image",
                "spatial_size": dataset["spatial_size"],
            }
        )
    else:
        steps.append(
            {"_target_": "Resized", "keys": "image", "spatial_size": dataset["spatial_size"]}
        )
    # The trainer's z-score of every image and channel (normalize_images).
    steps.append({"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True})
    return {"_target_": "Compose", "transforms": steps}


def _segmentation_parts(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": card["inference"]["roi_size"],
            "sw_batch_size": card["inference"]["sw_batch_size"],
            "overlap": card["inference"]["overlap"],
            "mode": card["inference"]["mode"],
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                },
            ],
        },
        "extra_handlers": [],
    }


def _classification_parts() -> dict[str, Any]:
    return {
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
        },
        "extra_handlers": [
            {
                "_target_": "ClassificationSaver",
                "output_dir": "@output_dir",
                "batch_transform": "$lambda batch: batch[0]['image'].meta",
                "output_transform": "$lambda output: output[0]['pred'].unsqueeze(0)",
            }
        ],
    }


def _inference(card: dict[str, Any]) -> dict[str, Any]:
    task = card["task"]
    parts = _segmentation_parts(card) if task == "segmentation" else _classification_parts()
    extra = parts.pop("extra_handlers")
    pattern = "'*.png'" if int(card["model"].get("spatial_dims", 2)) == 2 else "'*.nii*'"
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "dataset_dir": "$os.path.join(@bundle_root, 'images')",
        "datalist": f"$sorted(glob.glob(os.path.join(@dataset_dir, {pattern})))",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": _network_def(card["model"]),
        "network": "$@network_def.to(@device)",
        "preprocessing": _preprocessing(card),
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': name} for name in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        **parts,
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": f"$os.path.join(@bundle_root, '{BUNDLE_WEIGHTS}')",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            *extra,
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "run": ["$@evaluator.run()"],
    }


def _metadata(card: dict[str, Any]) -> dict[str, Any]:
    versions = card["versions"]
    model = card["model"]
    source = card["source"]
    dims = int(model.get("spatial_dims", 2))
    roi = card["inference"]["roi_size"]
    labels = card["labels"]
    segmentation = card["task"] == "segmentation"
    return {
        "schema": _METADATA_SCHEMA,
        "version": f"0.1.{source['round']}",
        "changelog": {f"0.1.{source['round']}": f"round {source['round']} of {source['run_name']}"},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": __import__("numpy").__version__,
        "required_packages_version": {"consortia": versions["consortia"]},
        "task": f"{card['task']} ({dims}D), federated study {source['run_name']}",
        "description": "The global model of a Consortia federated study; the `consortia` "
        "entry holds its preprocessing, labels, provenance, privacy spent and metrics.",
        "authors": "the consortium of the study",
        "copyright": "the consortium of the study",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": int(model.get("in_channels", 1)),
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": segmentation,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image" if segmentation else "probabilities",
                    "format": "segmentation" if segmentation else "classification",
                    "num_channels": len(labels),
                    "spatial_shape": roi if segmentation else [len(labels)],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": segmentation,
                    "channel_def": labels,
                }
            },
        },
        "consortia": card,
    }


def bundle_configs(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The bundle's config files (path in the bundle -> JSON object) for `card`."""
    return {BUNDLE_METADATA: _metadata(card), BUNDLE_INFERENCE: _inference(card)}
