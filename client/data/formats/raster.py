"""Readers for 2D raster images: PNG files and cases of an npz archive in MedMNIST layout.

Both return an `ImageVolume` with the values as stored (no rescaling) and unit spacing,
since neither format records the pixel size. Problems are `CaseProblem`s naming the file.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from consortia.client.data.formats.volume import CaseProblem, ImageVolume

__all__ = ["NpzArchive", "read_png", "read_png_label"]

logger = logging.getLogger("consortia.client.data.formats.raster")

_PIL_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)
_NPZ_ERRORS = (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError)


def _open_png(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise CaseProblem(str(path), f"not a PNG file (found {image.format})")
            image.load()
            return image.copy()
    except CaseProblem:
        raise
    except FileNotFoundError:
        raise CaseProblem(str(path), "file not found") from None
    except _PIL_ERRORS as err:
        raise CaseProblem(str(path), f"not a readable PNG image: {err}") from None


def read_png(path: Path) -> ImageVolume:
    """A PNG as (1, H, W) (grey) or (3, H, W) (colour; alpha dropped), float32."""
    image = _open_png(path)
    if image.mode in ("1", "L", "LA"):
        array = np.asarray(image.convert("L"), dtype=np.float32)[None]
    elif image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image, dtype=np.float32)[None]
    else:
        array = np.moveaxis(np.asarray(image.convert("RGB"), dtype=np.float32), -1, 0)
    logger.debug("read PNG %s: %s", path, array.shape)
    return ImageVolume(np.ascontiguousarray(array), spacing=(1.0, 1.0))


def read_png_label(path: Path) -> np.ndarray:
    """A PNG label mask as int64 (H, W): grey values or palette indices are the classes."""
    image = _open_png(path)
    if image.mode not in ("1", "L", "P") and not image.mode.startswith("I"):
        raise CaseProblem(
            str(path), f"a label mask must be a grey or palette PNG, not {image.mode}"
        )
    return np.asarray(image, dtype=np.int64)


def _channels_first(item: np.ndarray, path: Path, key: str) -> np.ndarray:
    """One MedMNIST entry as channels-first: (H,W) grey, (H,W,3) colour, (D,H,W) grey 3D."""
    if item.ndim == 2:
        return item[None]
    if item.ndim == 3 and item.shape[-1] in (3, 4) and item.shape[0] > 4:
        return np.moveaxis(item[..., :3], -1, 0)
    if item.ndim == 3:
        return item[None]
    raise CaseProblem(str(path), f"{key}: entries must be (H,W), (H,W,3) or (D,H,W)")


class NpzArchive:
    """An npz archive opened once; each key's array is read on first use and kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._arrays: dict[str, np.ndarray] = {}
        self._problem: str | None = None

    def _array(self, key: str) -> np.ndarray:
        if key in self._arrays:
            return self._arrays[key]
        if self._problem is not None:
            raise CaseProblem(str(self.path), self._problem)
        try:
            with np.load(self.path, allow_pickle=False) as archive:
                if key not in archive.files:
                    raise CaseProblem(str(self.path), f"{key} is not in the archive")
                array = np.asarray(archive[key])
        except CaseProblem:
            raise
        except FileNotFoundError:
            self._problem = "file not found"
            raise CaseProblem(str(self.path), self._problem) from None
        except _NPZ_ERRORS as err:
            self._problem = f"not a readable npz archive: {err}"
            raise CaseProblem(str(self.path), self._problem) from None
        self._arrays[key] = array
        return array

    def _entry(self, key: str, index: int) -> np.ndarray:
        array = self._array(key)
        if array.ndim == 0 or not 0 <= index < len(array):
            count = 0 if array.ndim == 0 else len(array)
            raise CaseProblem(str(self.path), f"{key}[{index}]: index out of range ({count})")
        return array[index]

    def image(self, key: str, index: int) -> ImageVolume:
        """Entry `index` of `key` as an image, values as stored."""
        array = _channels_first(self._entry(key, index), self.path, key).astype(np.float32)
        spacing = (1.0,) * (array.ndim - 1)
        return ImageVolume(np.ascontiguousarray(array), spacing=spacing)

    def label(self, key: str, index: int) -> np.ndarray:
        """Entry `index` of `key` (a mask) as int64."""
        entry = self._entry(key, index)
        if not np.issubdtype(entry.dtype, np.integer) and not np.array_equal(
            entry, np.round(entry)
        ):
            raise CaseProblem(str(self.path), f"{key}[{index}]: mask values are not integers")
        return entry.astype(np.int64)
