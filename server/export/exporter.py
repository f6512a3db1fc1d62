"""Export a run's global model as TorchScript, ONNX or a MONAI bundle, with its card.

`export_model` picks the round (the final model of a completed run, or the round asked
for), checks the checkpoint against the SHA-256 the run recorded, rebuilds the network
with the shared model factory, writes the model and its card into a fresh folder (moved
into place only when complete: nothing half-written) and checks the written model
against the checkpoint on a test input (the largest absolute difference goes into the
card's `checks`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import torch
from torch import nn

from consortia.common.config.settings import ModelConfig
from consortia.common.errors import ConsortiaError
from consortia.common.files import sha256_file
from consortia.common.networks.models import build_model
from consortia.server.export.bundle import BUNDLE_INFERENCE, BUNDLE_WEIGHTS, bundle_configs
from consortia.server.export.card import CARD_FILE, ExportSource, build_card, card_text
from consortia.server.run.folder import read_record

__all__ = ["EXPORT_FORMATS", "ExportFormat", "ExportResult", "export_model", "select_round"]

logger = logging.getLogger("consortia.server")

ExportFormat = Literal["monai-bundle", "torchscript", "onnx"]
EXPORT_FORMATS: Final[tuple[str, ...]] = ("monai-bundle", "torchscript", "onnx")
_MODEL_FILES: Final = {"torchscript": "model.ts", "onnx": "model.onnx"}
_COMPLETED: Final = "completed"
_ONNX_OPSET: Final = 17


@dataclass(frozen=True)
class ExportResult:
    """Where the export went, which round it holds and how closely it matches."""

    out: Path
    round: int
    note: str | None
    max_abs_diff: float | None


def _checkpointed(run_dir: Path) -> tuple[Any, list[Any]]:
    record = read_record(run_dir, missing="not a run folder (no results.json)")
    return record, [entry for entry in record.rounds if entry.checkpoint]


def select_round(run_dir: Path, round_number: int | None = None) -> ExportSource:
    """The round to export: `round_number`, or the final model of a completed run; a
    run that did not complete is refused unless a round is named (the card says so)."""
    record, entries = _checkpointed(run_dir)
    trained = [entry for entry in entries if entry.round >= 1]
    last = trained[-1].round if trained else None
    status = record.status or "unknown"
    if round_number is None:
        if status != _COMPLETED:
            why = f" ({record.error})" if record.error else ""
            hint = f"pass --round {last} to export its last model" if last else "no model"
            raise ConsortiaError(f"{run_dir}: the run is {status}{why}; {hint}")
        if last is None:
            raise ConsortiaError(f"{run_dir}: the run has no trained round to export")
        round_number = last
    entry = record.round_entry(round_number)
    if entry is None or not entry.checkpoint:
        have = ", ".join(str(e.round) for e in entries) or "none"
        raise ConsortiaError(f"{run_dir}: no checkpoint of round {round_number} (have: {have})")
    note = None
    if status != _COMPLETED:
        note = f"the run is {status}; exported round {round_number} (last recorded: {last})"
    elif round_number != last:
        note = f"round {round_number}, not the final model (round {last})"
    checkpoint = run_dir / entry.checkpoint
    if not checkpoint.is_file():
        raise ConsortiaError(f"{checkpoint}: checkpoint of round {round_number} is missing")
    if entry.model_sha256 and sha256_file(checkpoint) != entry.model_sha256:
        raise ConsortiaError(
            f"{checkpoint}: SHA-256 differs from the one results.json recorded for round "
            f"{round_number}: the checkpoint was altered or damaged"
        )
    return ExportSource(run_dir, record, entry, checkpoint, note)


def _load_network(source: ExportSource) -> nn.Module:
    settings = source.record.settings
    if settings is None or settings.model is None:
        raise ConsortiaError(f"{source.run_dir}: results.json records no model settings")
    model = build_model(ModelConfig.model_validate(settings.model).to_model_settings())
    state = torch.load(source.checkpoint, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConsortiaError(f"{source.checkpoint}: does not fit the run's model ({err})") from None
    return model.eval()


def _example(card: dict[str, Any]) -> torch.Tensor:
    size = card["inference"]["roi_size"]
    channels = int(card["model"].get("in_channels", 1))
    return torch.randn(1, channels, *size, generator=torch.Generator().manual_seed(0))


def _write_torchscript(model: nn.Module, folder: Path, card: dict[str, Any]) -> nn.Module:
    example = _example(card)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    path = folder / _MODEL_FILES["torchscript"]
    torch.jit.save(traced, str(path), _extra_files={CARD_FILE: card_text(card)})
    loaded: nn.Module = torch.jit.load(str(path), map_location="cpu")
    return loaded


def _onnx_runner(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def _write_onnx(model: nn.Module, folder: Path, card: dict[str, Any]) -> Any:
    try:
        import onnx
    except ImportError:
        raise ConsortiaError(
            "ONNX export needs the onnx package: pip install 'consortia[export]'"
        ) from None
    path = folder / _MODEL_FILES["onnx"]
    axes = {"image": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        # torch's TorchScript-based exporter: the dynamo one needs onnxscript besides.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (_example(card),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=_ONNX_OPSET,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "consortia", json.dumps(card)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return _onnx_runner(path)


def _write_bundle_configs(folder: Path, card: dict[str, Any]) -> None:
    for relative, config in bundle_configs(card).items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _write_bundle(model: nn.Module, folder: Path, card: dict[str, Any]) -> nn.Module:
    from monai.bundle import ConfigParser

    _write_bundle_configs(folder, card)
    (folder / BUNDLE_WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / BUNDLE_WEIGHTS)
    # Read back with MONAI's own bundle parser, as a user of the bundle would.
    parser = ConfigParser()
    parser.read_config(str(folder / BUNDLE_INFERENCE))
    network: nn.Module = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(folder / BUNDLE_WEIGHTS, weights_only=True))
    return network.eval()


def _max_abs_diff(model: nn.Module, runner: Any, card: dict[str, Any]) -> float | None:
    if runner is None:
        return None
    example = _example(card)
    with torch.no_grad():
        return float((model(example) - runner(example)).abs().max())


def export_model(
    run_dir: Path,
    out: Path,
    export_format: ExportFormat,
    *,
    round_number: int | None = None,
    manifest: Path | None = None,
) -> ExportResult:
    """Export the chosen round of the run in `run_dir` into the new folder `out`."""
    if export_format not in EXPORT_FORMATS:
        raise ConsortiaError(f"--format {export_format!r}: one of {', '.join(EXPORT_FORMATS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConsortiaError(f"{out}: already exists and is not empty; choose a new folder")
    source = select_round(run_dir, round_number)
    model = _load_network(source)
    model_file = _MODEL_FILES.get(export_format, BUNDLE_WEIGHTS)
    card = build_card(source, export_format, model_file, manifest=manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        writer = {"torchscript": _write_torchscript, "onnx": _write_onnx}.get(
            export_format, _write_bundle
        )
        difference = _max_abs_diff(model, writer(model, staging, card), card)
        card["checks"] = {"max_abs_diff_vs_checkpoint": difference}
        (staging / CARD_FILE).write_text(card_text(card), encoding="utf-8")
        if export_format == "monai-bundle":
            _write_bundle_configs(staging, card)  # metadata.json with the checks
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("exported round %d as %s", source.entry.round, export_format)
    return ExportResult(out, source.entry.round, source.note, difference)
