"""Files written crash-safely (a reader sees the old file or the new one, never half of
one) and files identified by the SHA-256 of their bytes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "exclusive_lock",
    "json_default",
    "sha256_file",
    "write_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

try:  # POSIX advisory locks; elsewhere one process at a time is assumed
    import fcntl
except ImportError:  # pragma: no cover - Windows nodes run one task at a time
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (through the file `path` + ``.lock``) for the
    block: a read-modify-write of `path` by another process waits for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".lock").open("a") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Let `write` fill a temporary file beside `path`, fsync it, rename it over `path`,
    and fsync the folder so that the rename itself survives a power cut. On any error
    the temporary file is removed and `path` is untouched."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # platforms without directory handles
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_text_atomic(path: Path, text: str) -> None:
    """`write_atomic` of UTF-8 text."""
    data = text.encode("utf-8")

    def _write(handle: IO[bytes]) -> None:
        handle.write(data)

    write_atomic(path, _write)


def write_json_atomic(path: Path, data: Any) -> None:
    """`write_text_atomic` of `data` as indented JSON (NaN/inf refused)."""
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False, default=json_default))
