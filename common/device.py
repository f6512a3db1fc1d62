"""Pick the compute device and the mixed-precision mode that is safe on it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["DEVICE_ENV", "autocast", "select_device"]

DEVICE_ENV = "CONSORTIA_DEVICE"


def select_device() -> torch.device:
    """CUDA when present, else CPU; `CONSORTIA_DEVICE=cpu|cuda|cuda:N` overrides."""
    requested = os.environ.get(DEVICE_ENV, "").strip()
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{DEVICE_ENV}={requested} but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bfloat16 autocast on CUDA devices that support it; full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
