"""Pick the compute device and the mixed-precision mode that is safe on it."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import torch

from consortia.common.config.device_names import DEVICE_ENV, DEVICE_PATTERN
from consortia.common.errors import ConfigError

__all__ = ["DEVICE_ENV", "autocast", "select_device"]


def select_device(configured: str = "auto") -> torch.device:
    """The device to compute on: `CONSORTIA_DEVICE` (set by `consortia node start
    --device`) if given, else `configured` (the site's `[node] device`); "auto" is CUDA
    when present, else CPU. A device that is not there is a `ConfigError` naming it."""
    override = os.environ.get(DEVICE_ENV, "").strip()
    requested = override or configured
    source = f"{DEVICE_ENV}={override}" if override else f"node.device = {configured!r}"
    if not re.fullmatch(DEVICE_PATTERN, requested):
        raise ConfigError(f"{source}: not a device (auto, cpu, cuda, cuda:N or mps)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{source}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{source}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{source}: Apple MPS is not available on this machine")
    return device


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bfloat16 autocast on CUDA devices that support it; full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
