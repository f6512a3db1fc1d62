"""Simulated acquisition shifts for simulated sites built from one public data set.

A manifest's `[simulation]` table asks for them; they are applied to each preprocessed
image at load time, deterministically (the noise is seeded by the table's seed and the
case id), and the table is part of the manifest bytes and so of the data set fingerprint.
Order: blur (Gaussian, sigma in voxels, scipy.ndimage), gamma (on the image's own min..max range),
contrast (scaled around the image mean), then additive Gaussian noise (std as a fraction
of the image's std).
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy.ndimage import gaussian_filter

from consortia.client.data.manifest import SimulationSettings

__all__ = ["apply_acquisition_shift"]


def _rng(settings: SimulationSettings, case_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{settings.seed}\0{case_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def apply_acquisition_shift(
    image: np.ndarray, settings: SimulationSettings, case_id: str
) -> np.ndarray:
    """`image` (C, *spatial) float32 as a site with this acquisition would record it."""
    out = image.astype(np.float32, copy=True)
    if settings.blur > 0:
        sigma = (0.0,) + (settings.blur,) * (out.ndim - 1)  # not across channels
        out = gaussian_filter(out, sigma=sigma).astype(np.float32)
    if settings.gamma != 1.0:
        low, high = float(out.min()), float(out.max())
        if high > low:
            scaled = (out - low) / (high - low)
            out = (low + (high - low) * np.power(scaled, settings.gamma)).astype(np.float32)
    if settings.contrast != 1.0:
        mean = float(out.mean())
        out = (mean + settings.contrast * (out - mean)).astype(np.float32)
    if settings.noise > 0:
        std = float(out.std()) or 1.0
        noise = _rng(settings, case_id).normal(0.0, settings.noise * std, size=out.shape)
        out = (out + noise).astype(np.float32)
    return out
