"""Site names where they meet the file system: one check, used wherever a name that a
node declared (or a coordinator typed) becomes a file or folder name.

A node answers the server's `query` with its site name; on a server run with
`--insecure` (no signatures) nothing ties that name to a key, so a name such as
`../../x` must never reach a path (issue 19, F14). `check_site_name` is applied where
the name enters (the server's reading of a `query` answer, the site registry) and
`site_path` again where it becomes a path (the saliency maps kept in the run folder).
A valid name is 1-64 letters, digits, `_`, `.` or `-`, starting with a letter or digit:
never empty, never `.` or `..`, never a separator.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from consortia.common.errors import ConsortiaError

__all__ = ["SITE_NAME_PATTERN", "InvalidNameError", "check_site_name", "site_path"]

SITE_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SITE_NAME: Final = re.compile(SITE_NAME_PATTERN)


class InvalidNameError(ConsortiaError, ValueError):
    """A name that may not be used as a file or folder name; the message says which."""


def check_site_name(name: object, what: str = "site name") -> str:
    """`name` if it is a valid site name, else `InvalidNameError` naming `what`."""
    if not isinstance(name, str) or not _SITE_NAME.fullmatch(name):
        shown = repr(name)[:80]
        raise InvalidNameError(
            f"invalid {what} {shown}: use 1-64 letters, digits, '_', '.' or '-', starting "
            "with a letter or digit"
        )
    return name


def site_path(parent: Path, name: str, what: str = "site name") -> Path:
    """`parent / name` for a valid site name, refused if it is a symbolic link (which
    could lead out of `parent`)."""
    target = parent / check_site_name(name, what)
    if target.is_symlink():
        raise InvalidNameError(f"{what} {name!r}: its folder is a symbolic link")
    return target
