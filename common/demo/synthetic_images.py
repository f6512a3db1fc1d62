"""Drawing the clean SYNTHETIC demo images: body, organ, vessels and lesions.

Part of the demo data generator (`consortia.common.demo.data`); see its docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage  # type: ignore[import-untyped,unused-ignore]

__all__ = ["draw_clean"]

FloatArray = NDArray[np.float64]
UInt8Array = NDArray[np.uint8]

_MAX_LESIONS: Final = 3
_MAX_VESSELS: Final = 2
_REFERENCE_SIZE: Final = 64


def _ellipse_distance(
    coords: FloatArray,
    cx: FloatArray,
    cy: FloatArray,
    ax: FloatArray,
    ay: FloatArray,
    theta: FloatArray,
) -> FloatArray:
    """Normalised elliptical radius (1 on the outline) of each ellipse at every pixel.

    ``coords`` are the pixel-centre coordinates along one axis (rows and columns share them).
    Ellipse parameters share a leading shape ``S``; the result has shape ``S + (H, W)``. The
    rotated coordinates are separable sums of a row term and a column term, which keeps the
    full-size work to a few array operations.
    """
    cos_t, sin_t = np.cos(theta)[..., None], np.sin(theta)[..., None]
    inv_ax, inv_ay = 1.0 / ax[..., None], 1.0 / ay[..., None]
    x = coords - cx[..., None]  # S + (W,)
    y = coords - cy[..., None]  # S + (H,)
    u = (y * sin_t * inv_ax)[..., :, None] + (x * cos_t * inv_ax)[..., None, :]
    v = (y * cos_t * inv_ay)[..., :, None] - (x * sin_t * inv_ay)[..., None, :]
    u *= u
    v *= v
    u += v
    result: FloatArray = np.sqrt(u, out=u)
    return result


def _soft_inside(distance: FloatArray, minor_px: FloatArray, edge_px: float) -> FloatArray:
    """Smooth 0..1 occupancy (smoothstep over ``4 * edge_px`` pixels across the outline).

    ``minor_px`` converts the normalised radius to pixels. Overwrites and returns a new array;
    ``distance`` is left untouched.
    """
    ramp = 1.0 - distance
    ramp *= minor_px[..., None, None] / (4.0 * edge_px)
    ramp += 0.5
    np.clip(ramp, 0.0, 1.0, out=ramp)
    result: FloatArray = ramp * ramp * (3.0 - 2.0 * ramp)
    return result


def _normalised(field: FloatArray) -> FloatArray:
    """Per-image zero mean and unit standard deviation (in place)."""
    field -= field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-12
    return field


def _textures(
    rng: np.random.Generator, shape: tuple[int, int, int], scale: float
) -> tuple[FloatArray, FloatArray]:
    """Fine (correlation ~1 px) and coarse (~3 px) unit-std random fields from one white draw."""
    fine = ndimage.gaussian_filter(
        rng.standard_normal(shape), sigma=(0.0, scale, scale), truncate=3.0
    )
    coarse_sigma = math.sqrt(8.0) * scale  # sqrt(1 + 8) = 3 px in total
    coarse = ndimage.gaussian_filter(fine, sigma=(0.0, coarse_sigma, coarse_sigma), truncate=3.0)
    return _normalised(fine), _normalised(coarse)


def _composite(base: FloatArray, value: FloatArray, alpha: FloatArray) -> FloatArray:
    result: FloatArray = base * (1.0 - alpha) + value * alpha
    return result


def _blob_layer(
    coords: FloatArray,
    centres: tuple[FloatArray, FloatArray],
    radii_px: tuple[FloatArray, FloatArray],
    theta: FloatArray,
    weight: FloatArray,
    active: NDArray[np.bool_],
    edge_px: float,
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Max over each case's active blobs of ``weight * occupancy``, and the union of their masks.

    Blob parameters have shape ``(N, K)``; only active blobs are evaluated, slot by slot.
    """
    n, slots = active.shape
    size = coords.shape[0]
    half = size / 2.0
    alpha = np.zeros((n, size, size), dtype=np.float64)
    mask = np.zeros((n, size, size), dtype=bool)
    cx, cy = centres
    rx_px, ry_px = radii_px
    for slot in range(slots):
        idx = np.flatnonzero(active[:, slot])
        if idx.size == 0:
            continue
        distance = _ellipse_distance(
            coords,
            cx[idx, slot],
            cy[idx, slot],
            rx_px[idx, slot] / half,
            ry_px[idx, slot] / half,
            theta[idx, slot],
        )
        occupancy = _soft_inside(distance, np.minimum(rx_px, ry_px)[idx, slot], edge_px)
        occupancy *= weight[idx, slot][:, None, None]
        alpha[idx] = np.maximum(alpha[idx], occupancy)
        mask[idx] |= distance < 1.0
    return alpha, mask


@dataclass(frozen=True)
class _Canvas:
    """The batch being drawn: its random stream, size and pixel-centre coordinates."""

    rng: np.random.Generator
    n: int
    size: int

    @property
    def half(self) -> float:
        return self.size / 2.0

    @property
    def scale(self) -> float:
        return self.size / _REFERENCE_SIZE

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n, self.size, self.size)

    @cached_property
    def coords(self) -> FloatArray:
        return (np.arange(self.size, dtype=np.float64) + 0.5 - self.half) / self.half

    def uniform(
        self, low: float, high: float, count: int | tuple[int, ...] | None = None
    ) -> FloatArray:
        """``count`` (default: one per case) uniform draws from the batch's stream."""
        return self.rng.uniform(low, high, self.n if count is None else count)


@dataclass(frozen=True)
class _Organ:
    """The organ ellipse of each case: parameters, distance map, occupancy and size."""

    cx: FloatArray
    cy: FloatArray
    ax: FloatArray
    ay: FloatArray
    theta: FloatArray
    distance: FloatArray
    alpha: FloatArray
    minor_px: FloatArray

    def place_inside(
        self, canvas: _Canvas, radius_px: FloatArray, count: tuple[int, int]
    ) -> tuple[FloatArray, ...]:
        """Centres (normalised coordinates) that keep a disc of ``radius_px`` in the organ."""
        rho_max = np.clip(1.0 - radius_px / self.minor_px[:, None] - 0.08, 0.0, None)
        rho = rho_max * np.sqrt(canvas.uniform(0.0, 1.0, count))
        phi = canvas.uniform(0.0, 2.0 * math.pi, count)
        u = rho * np.cos(phi) * self.ax[:, None]
        v = rho * np.sin(phi) * self.ay[:, None]
        cos_t, sin_t = np.cos(self.theta)[:, None], np.sin(self.theta)[:, None]
        return self.cx[:, None] + u * cos_t - v * sin_t, self.cy[:, None] + u * sin_t + v * cos_t


def _draw_body(canvas: _Canvas) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The background with the body and its spine, and the fine and coarse textures."""
    # Body: a wide ellipse with a brighter rim (subcutaneous fat) and a bright "spine".
    uniform, coords, half, scale = canvas.uniform, canvas.coords, canvas.half, canvas.scale
    body_cx, body_cy = uniform(-0.03, 0.03), uniform(-0.03, 0.03)
    body_ax, body_ay = uniform(0.84, 0.95), uniform(0.8, 0.9)
    body_theta = uniform(-0.08, 0.08)
    body_d = _ellipse_distance(coords, body_cx, body_cy, body_ax, body_ay, body_theta)
    body_minor = np.minimum(body_ax, body_ay) * half
    body_alpha = _soft_inside(body_d, body_minor, 0.8 * scale)
    inner_alpha = _soft_inside(body_d / 0.93, body_minor * 0.93, 1.0 * scale)
    rim_level = uniform(0.42, 0.5)[:, None, None]
    fine_texture, coarse_texture = _textures(canvas.rng, canvas.shape, scale)
    body_level = uniform(0.26, 0.32)[:, None, None] + 0.03 * coarse_texture

    spine_cx = body_cx + uniform(-0.03, 0.03)
    spine_cy = body_cy + body_ay - 0.2
    spine_r = uniform(0.08, 0.11)
    spine_d = _ellipse_distance(
        coords, spine_cx, spine_cy, spine_r * 1.2, spine_r, np.zeros(canvas.n, dtype=np.float64)
    )
    spine_alpha = _soft_inside(spine_d, spine_r * half, 0.7 * scale)
    spine_level = uniform(0.75, 0.85)[:, None, None]

    image = np.full(canvas.shape, 0.02, dtype=np.float64)
    image = _composite(image, rim_level, body_alpha)
    image = _composite(image, body_level, inner_alpha)
    image = _composite(image, spine_level, spine_alpha)
    return image, fine_texture, coarse_texture


def _draw_organ(
    canvas: _Canvas, fine_texture: FloatArray, coarse_texture: FloatArray
) -> tuple[_Organ, FloatArray]:
    """The organ (a textured ellipse) of each case, and its grey level per pixel."""
    uniform = canvas.uniform
    cx, cy = uniform(-0.1, 0.1), uniform(-0.18, -0.05)
    ax, ay = uniform(0.56, 0.68), uniform(0.46, 0.55)
    theta = uniform(-0.5, 0.5)
    distance = _ellipse_distance(canvas.coords, cx, cy, ax, ay, theta)
    minor_px = np.minimum(ax, ay) * canvas.half
    alpha = _soft_inside(distance, minor_px, 0.8 * canvas.scale)
    level = uniform(0.52, 0.6)[:, None, None] + 0.035 * coarse_texture + 0.012 * fine_texture
    return _Organ(cx, cy, ax, ay, theta, distance, alpha, minor_px), level


def _draw_vessels(canvas: _Canvas, organ: _Organ) -> FloatArray:
    """Vessels: small dark spots inside the organ in every case (distractors, not lesions)."""
    n, scale = canvas.n, canvas.scale
    vessel_count = canvas.rng.integers(0, _MAX_VESSELS + 1, size=(n,))
    vessel_r_px = canvas.uniform(1.2, 2.2, (n, _MAX_VESSELS)) * scale
    vessel_cx, vessel_cy = organ.place_inside(canvas, vessel_r_px, (n, _MAX_VESSELS))
    vessel_active = np.arange(_MAX_VESSELS)[None, :] < vessel_count[:, None]
    vessel_alpha, _ = _blob_layer(
        canvas.coords,
        (vessel_cx, vessel_cy),
        (vessel_r_px, vessel_r_px),
        np.zeros_like(vessel_r_px),
        np.full_like(vessel_r_px, 0.1),
        vessel_active,
        0.6 * scale,
    )
    return vessel_alpha


def _draw_lesions(
    canvas: _Canvas, organ: _Organ, positive: NDArray[np.bool_]
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Lesions: 1-3 brighter blobs in each positive case; their alpha and mask."""
    n, scale, uniform = canvas.n, canvas.scale, canvas.uniform
    lesion_count = np.where(
        positive, canvas.rng.choice(np.arange(1, _MAX_LESIONS + 1), n, p=[0.6, 0.3, 0.1]), 0
    )
    r_max_px = np.minimum(12.0 * scale, 0.7 * organ.minor_px)[:, None]
    r_min_px = 3.0 * scale
    lesion_rx_px = r_min_px * np.exp(
        uniform(0.0, 1.0, (n, _MAX_LESIONS)) * np.log(r_max_px / r_min_px)
    )
    lesion_ry_px = np.maximum(lesion_rx_px * uniform(0.7, 1.0, (n, _MAX_LESIONS)), 2.5 * scale)
    lesion_theta = uniform(0.0, math.pi, (n, _MAX_LESIONS))
    lesion_cx, lesion_cy = organ.place_inside(canvas, lesion_rx_px, (n, _MAX_LESIONS))
    lesion_contrast = uniform(0.16, 0.28, (n, _MAX_LESIONS))
    lesion_active = np.arange(_MAX_LESIONS)[None, :] < lesion_count[:, None]
    return _blob_layer(
        canvas.coords,
        (lesion_cx, lesion_cy),
        (lesion_rx_px, lesion_ry_px),
        lesion_theta,
        lesion_contrast,
        lesion_active,
        0.6 * scale,
    )


def draw_clean(
    rng: np.random.Generator, positive: NDArray[np.bool_], size: int
) -> tuple[FloatArray, UInt8Array, UInt8Array]:
    """Draw clean cases (lesions where ``positive``): image in [0, 1], lesion and organ masks."""
    canvas = _Canvas(rng, positive.shape[0], size)
    image, fine_texture, coarse_texture = _draw_body(canvas)
    # Organ: textured ellipse, composited on top of everything else in the body.
    organ, organ_level = _draw_organ(canvas, fine_texture, coarse_texture)
    image = _composite(image, organ_level, organ.alpha)
    image -= _draw_vessels(canvas, organ) * organ.alpha
    lesion_alpha, lesion_mask = _draw_lesions(canvas, organ, positive)
    image += lesion_alpha * organ.alpha

    organ_mask = organ.distance < 1.0
    lesion_mask &= organ_mask
    return np.clip(image, 0.0, 1.0), lesion_mask.astype(np.uint8), organ_mask.astype(np.uint8)
