"""The approved warm start (`[run.model.init]`): load a checkpoint or MONAI bundle, check that
it fits the architecture and hashes to the approved SHA-256, and check round 1 at a site.

The hash is over the weights as they travel (`weights_sha256`: the float32 vector in the
model factory's state-dict order, the bytes a site receives in round 1), so one
approval covers the same weights saved as a `.pt` file or inside a bundle, and a site
can check what it receives without the file. A file is loaded with
`torch.load(weights_only=True)`: no code in it runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from consortia.common.config.model_settings import ModelSettings
from consortia.common.config.settings import RunSettings
from consortia.common.errors import ConfigError
from consortia.common.files import sha256_file, write_atomic
from consortia.common.networks.models import build_model
from consortia.common.networks.weights import WeightLayout
from consortia.common.wire.record_fields import RecordFieldError

__all__ = [
    "BUNDLE_WEIGHTS",
    "WARM_START",
    "WarmStart",
    "WarmStartError",
    "WarmStartMismatchError",
    "check_round_start",
    "fit_weights",
    "layout_of",
    "load_warm_start",
    "read_weights",
    "save_weights",
    "weights_sha256",
]

logger = logging.getLogger(__name__)

#: Where a MONAI bundle keeps its weights (the bundle specification's default).
BUNDLE_WEIGHTS = Path("models") / "model.pt"
#: The run's audit event when the server has checked the warm start: path, sha256, file_sha256.
WARM_START = "warm_start"
_WRAPPERS = ("model", "state_dict")  # MONAI's CheckpointSaver and common trainers
_SHOWN = 3  # names listed in an architecture error


class WarmStartError(ConfigError):
    """The approved warm start is missing, altered or of another architecture."""


class WarmStartMismatchError(RecordFieldError):
    """A site received a round-1 model that is not the approved warm start (refused as a
    malformed message: nothing is trained, no budget spent)."""


def weights_sha256(vector: np.ndarray) -> str:
    """SHA-256 of a flat weight vector's bytes (equal to the site's `model_sha256`)."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float32).tobytes()).hexdigest()


@dataclass(frozen=True)
class WarmStart:
    """A checked warm start: its weights in layout order and what the record shows."""

    weights: np.ndarray
    path: str  # as written in the run config
    sha256: str  # of the weights (the approved value)
    file_sha256: str  # of the file read (for a bundle, its models/model.pt)

    def to_record(self) -> dict[str, str]:
        """`{"path", "sha256", "file_sha256"}` for the provenance and the audit log."""
        return {"path": self.path, "sha256": self.sha256, "file_sha256": self.file_sha256}


def _weights_file(path: Path, source: str) -> Path:
    if path.is_dir():
        inner = path / BUNDLE_WEIGHTS
        if not inner.is_file():
            raise WarmStartError(
                f"{source}: {path} is a folder but not a MONAI bundle with {BUNDLE_WEIGHTS}"
            )
        return inner
    if not path.is_file():
        raise WarmStartError(f"{source}: {path}: file not found")
    return path


def _state_dict(loaded: object, source: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in _WRAPPERS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise WarmStartError(f"{source}: not a state dict of named tensors")
    return dict(loaded)


def read_weights(path: Path, source: str = "model.init") -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in a checkpoint file or a MONAI bundle folder, and the SHA-256 of
    the file read; raises `WarmStartError` naming `source` and the file."""
    file = _weights_file(path, source)
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refusals, truncated zips, not a torch file
        raise WarmStartError(f"{source}: {file}: not a readable weights file ({err})") from None
    return _state_dict(loaded, f"{source}: {file}"), sha256_file(file)


def fit_weights(state: Mapping[str, torch.Tensor], layout: WeightLayout, source: str) -> np.ndarray:
    """The weights in layout order, or an error saying how the architectures differ."""
    missing = [n for n in layout.names if n not in state]
    extra = [n for n in state if n not in set(layout.names)]
    wrong = [
        f"{n} {tuple(state[n].shape)} (expected {shape})"
        for n, shape in zip(layout.names, layout.shapes, strict=True)
        if n in state and tuple(state[n].shape) != shape
    ]
    problems = [
        f"{label} {len(items)}: {', '.join(items[:_SHOWN])}{' ...' if len(items) > _SHOWN else ''}"
        for label, items in (("missing", missing), ("unexpected", extra), ("shape", wrong))
        if items
    ]
    if problems:
        raise WarmStartError(
            f"{source}: another architecture than [run.model] builds ({'; '.join(problems)})"
        )
    if not all(torch.is_floating_point(state[n]) for n in layout.names):
        raise WarmStartError(f"{source}: holds non-floating-point weights")
    ordered = {n: state[n] for n in layout.names}
    vector = layout.flatten(ordered)
    if not np.all(np.isfinite(vector)):
        raise WarmStartError(f"{source}: holds NaN or infinite weights")
    return vector


def layout_of(model: ModelSettings) -> WeightLayout:
    """The weight layout of the factory's model for `model` (the seed does not matter)."""
    return WeightLayout.of(build_model(model).state_dict())


def load_warm_start(settings: RunSettings, layout: WeightLayout | None = None) -> WarmStart:
    """The run's approved warm start, checked: the file exists, fits the architecture of
    `settings.model` (`layout`, else built) and its weights hash to `model.init.sha256`."""
    init, location = settings.model.init, settings.init_file()
    if init is None or location is None:
        raise WarmStartError("model.init: the run config names no warm start")
    state, file_sha256 = read_weights(location)
    layout = layout or layout_of(settings.model.to_model_settings())
    vector = fit_weights(state, layout, f"model.init: {location}")
    digest = weights_sha256(vector)
    if digest != init.sha256:
        raise WarmStartError(
            f"model.init: {location}: its weights hash to {digest}, the approved run config "
            f"says {init.sha256} (the file was altered or replaced)"
        )
    logger.info("warm start %s: weights sha256 %s", init.path, digest)
    return WarmStart(vector, init.path, digest, file_sha256)


def check_round_start(settings: RunSettings, round_number: int, weights: np.ndarray) -> None:
    """At a site: refuse a round-1 global model other than the approved warm start."""
    init = settings.model.init
    if init is None or round_number != 1:
        return
    digest = weights_sha256(weights)
    if digest != init.sha256:
        raise WarmStartMismatchError(
            f"the round-1 global model hashes to {digest}, not to the approved warm start "
            f"model.init.sha256 {init.sha256}"
        )


def save_weights(model: torch.nn.Module, out: Path) -> tuple[str, str]:
    """Save `model`'s state dict to `out` (crash-safe); returns the weights' SHA-256 (the
    value for `model.init.sha256`) and the file's."""
    state = model.cpu().state_dict()
    vector = WeightLayout.of(state).flatten(state)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda file: torch.save(state, file))
    return weights_sha256(vector), sha256_file(out)
