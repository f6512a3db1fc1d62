"""An exported model as `consortia predict` loads it: its card and a forward function.

MODEL is the folder `consortia model export` wrote (or the model file in it): a MONAI
bundle (`configs/inference.json`, built with `monai.bundle.ConfigParser`, weights in
`models/model.pt`), TorchScript (`model.ts`) or ONNX (`model.onnx`, run by onnxruntime).
The card (`consortia-model.json`, docs/guide-clinic.md) says how to prepare an image, the
label names and the sliding-window settings; it is checked here, once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consortia.client.data.manifest import PreprocessSettings
from consortia.common.config.plan_settings import PlanSettings
from consortia.common.config.settings import Task, format_validation_error
from consortia.common.errors import ConsortiaError

__all__ = ["CARD_FILE", "CARD_SCHEMA", "ExportedModel", "InferenceSettings", "ModelCard"]

CARD_FILE: Final = "consortia-model.json"
CARD_SCHEMA: Final = "consortia.model/1"
_BUNDLE_INFERENCE: Final = "configs/inference.json"


class _Open(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class InferenceSettings(_Open):
    """`inference`: the sliding window predict uses (MONAI's `SlidingWindowInferer`)."""

    roi_size: tuple[int, ...]
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    mode: Literal["constant", "gaussian"] = "constant"
    sw_batch_size: int = Field(1, ge=1, le=64)


class Preprocessing(_Open):
    """`preprocessing`: the data set's `[preprocess]` and the run's plan, as exported."""

    dataset: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None


class ModelCard(_Open):
    """The parts of the card `predict` relies on (the rest is kept as written)."""

    schema_: Literal["consortia.model/1"] = Field(alias="schema")
    format: Literal["monai-bundle", "torchscript", "onnx"]
    model_file: str
    task: Task
    model: dict[str, Any]
    labels: dict[int, str]
    preprocessing: Preprocessing
    inference: InferenceSettings

    def plan_settings(self) -> PlanSettings | None:
        """The run's `[run.plan]`, when the study had one (it then decides preprocessing)."""
        if self.preprocessing.plan is None:
            return None
        try:
            return PlanSettings.model_validate(self.preprocessing.plan)
        except ValidationError as err:
            raise ConsortiaError(format_validation_error("model card: plan", err)) from None

    def preprocess_settings(self) -> PreprocessSettings:
        """The `[preprocess]` every image goes through, as the site's data set had it."""
        if self.preprocessing.dataset is None:
            raise ConsortiaError("the model's card has no [preprocess] and no plan")
        table = {k: v for k, v in self.preprocessing.dataset.items() if k != "modalities"}
        return PreprocessSettings.model_validate(table)

    @property
    def modalities(self) -> tuple[str, ...] | None:
        """The DICOM modalities the study's data set accepted (None: any)."""
        values = (self.preprocessing.dataset or {}).get("modalities")
        return tuple(values) if values else None

    @property
    def spatial_dims(self) -> int:
        return int(self.model.get("spatial_dims", 2))


Forward = Callable[[torch.Tensor], torch.Tensor]


def _card_path(model: Path) -> tuple[Path, Path]:
    """(the export folder, its card) for MODEL given as the folder or a file in it."""
    folder = model if model.is_dir() else model.parent
    for candidate in (folder, folder.parent):
        if (candidate / CARD_FILE).is_file():
            return candidate, candidate / CARD_FILE
    raise ConsortiaError(f"{model}: no {CARD_FILE} here: not a `consortia model export` folder")


def _read_card(path: Path) -> ModelCard:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConsortiaError(f"{path}: unreadable model card ({err})") from None
    try:
        return ModelCard.model_validate(data)
    except ValidationError as err:
        raise ConsortiaError(format_validation_error(str(path), err, ModelCard)) from None


def _bundle(folder: Path, device: torch.device) -> Forward:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / _BUNDLE_INFERENCE))
    network: torch.nn.Module = parser.get_parsed_content("network_def")
    weights = folder / "models" / "model.pt"
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.to(device).eval()
    return network


def _torchscript(path: Path, device: torch.device) -> Forward:
    module: torch.nn.Module = torch.jit.load(str(path), map_location=device)
    return module.eval()


def _onnx(path: Path, device: torch.device) -> Forward:
    try:
        import onnxruntime
    except ImportError:
        raise ConsortiaError(
            f"{path}: an ONNX model needs onnxruntime: pip install 'consortia[export]'"
        ) from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(str(path), providers=providers)
    name = session.get_inputs()[0].name

    def forward(batch: torch.Tensor) -> torch.Tensor:
        output = session.run(None, {name: batch.detach().cpu().numpy()})[0]
        return torch.from_numpy(output).to(batch.device)

    return forward


@dataclass(frozen=True)
class ExportedModel:
    """An exported model ready to run: `forward` maps a (B, C, *roi) batch to logits."""

    folder: Path
    card: ModelCard
    forward: Forward
    device: torch.device

    @classmethod
    def load(cls, model: Path, device: torch.device) -> ExportedModel:
        """Read the card and load the network of the export at `model`."""
        if not model.exists():
            raise ConsortiaError(f"{model}: model not found")
        folder, card_path = _card_path(model)
        card = _read_card(card_path)
        weights = folder / card.model_file
        if not weights.is_file():
            raise ConsortiaError(f"{weights}: the model file the card names is missing")
        try:
            if card.format == "monai-bundle":
                forward = _bundle(folder, device)
            elif card.format == "torchscript":
                forward = _torchscript(weights, device)
            else:
                forward = _onnx(weights, device)
        except ConsortiaError:
            raise
        except Exception as err:  # torch, MONAI and onnxruntime raise many types
            raise ConsortiaError(f"{weights}: cannot load the model ({err})") from None
        return cls(folder, card, forward, device)
