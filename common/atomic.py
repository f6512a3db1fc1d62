"""Crash-safe file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["json_default", "write_json_atomic", "write_text_atomic"]


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, fsync it, rename it over `path`, and
    fsync the folder so that the rename itself survives a power cut."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_json_atomic(path: Path, data: Any) -> None:
    """`write_text_atomic` of `data` as indented JSON (NaN/inf refused)."""
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False, default=json_default))
