"""Key and certificate files on disk: private files created owner-only from the first
byte, nothing replaced unless asked, clear errors for unreadable files.

A private key file is created with `os.open(O_CREAT | O_EXCL, 0o600)`, so there is no
moment at which another user could read it, and an existing file is never silently
replaced: the caller must pass `force=True`, and then the new file is written beside the
old one and renamed over it (a reader sees the old file or the new one, never half).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from consortia.common.errors import ConsortiaError
from consortia.common.files import write_atomic

__all__ = [
    "PRIVATE_MODE",
    "PUBLIC_MODE",
    "PKIError",
    "check_name",
    "check_targets",
    "read_key_file",
    "write_files",
]

_LOG = logging.getLogger("consortia.common.crypto.pki")

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

# The pattern of site, data set and run names in common/config/settings.py.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PKIError(ConsortiaError):
    """A key or certificate file is missing, unreadable, of the wrong kind, or would be
    overwritten; the message names the file and the problem."""


def check_name(name: str, what: str = "site name") -> str:
    """`name` when it is a valid Consortia name (letters, digits, `_.-`, at most 64)."""
    if not _NAME_PATTERN.fullmatch(name):
        raise PKIError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_targets(paths: Iterable[Path], *, force: bool) -> None:
    """Refuse (before anything is written) when a target exists and `force` is off."""
    if force:
        return
    existing = [path for path in paths if path.exists() or path.is_symlink()]
    if existing:
        names = ", ".join(str(path) for path in existing)
        verb, pronoun = ("exists", "it") if len(existing) == 1 else ("exist", "them")
        raise PKIError(
            f"{names} already {verb}; refusing to overwrite "
            f"(move {pronoun} away, or pass --force / force=True to replace {pronoun})"
        )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` exclusively with `mode` (umask cannot widen it) and fill it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PKIError(f"{path} already exists; refusing to overwrite") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_replace(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace `path` (the temporary file is 0600 until chmod to `mode`)."""

    def _fill(handle: IO[bytes]) -> None:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)

    write_atomic(path, _fill)


def write_files(files: Sequence[tuple[Path, bytes, int]], *, force: bool) -> None:
    """Write every `(path, data, mode)`; all targets are checked first, and when one write
    fails the files this call created are removed again (nothing half-written)."""
    check_targets((path for path, _, _ in files), force=force)
    created: list[Path] = []
    try:
        for path, data, mode in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            if force:
                _write_replace(path, data, mode)
            else:
                _write_new(path, data, mode)
                created.append(path)
    except OSError as err:
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise PKIError(f"cannot write {err.filename or 'key files'}: {err.strerror}") from err
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise


def read_key_file(path: Path, what: str, *, private: bool = False) -> bytes:
    """The bytes of a key or certificate file, or PKIError naming it and the problem; a
    private key readable by others is logged as a warning (it should be 0600)."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PKIError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise PKIError(f"{path}: is a folder, expected a {what} file") from None
    except OSError as err:
        raise PKIError(f"{path}: cannot read the {what} ({err.strerror})") from None
    if not data.strip():
        raise PKIError(f"{path}: the {what} file is empty")
    if private and stat.S_IMODE(mode) & 0o077:
        _LOG.warning(
            "%s: private key is readable by other users (mode %o); run chmod 600 on it",
            path,
            stat.S_IMODE(mode),
        )
    return data
