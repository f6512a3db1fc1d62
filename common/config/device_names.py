"""The device names a site may configure, without importing torch (settings use it)."""

from __future__ import annotations

__all__ = ["DEVICE_ENV", "DEVICE_PATTERN"]

#: Overrides the site's `[node] device` (what `consortia node start --device` sets).
DEVICE_ENV = "CONSORTIA_DEVICE"

#: `auto`, `cpu`, `cuda`, `cuda:N` or `mps` (`[node] device`, `--device`, CONSORTIA_DEVICE).
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:[0-9]{1,2}|mps)$"
