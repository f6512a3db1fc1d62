"""Lazy package faces: a sub-package re-exports its public names without importing them.

Each room's ``__init__.py`` lists what it re-exports and from which module; a name is imported
on first use (PEP 562 module ``__getattr__``). A face that imported eagerly would load torch
and MONAI for every command that touches one light module of a room, and would turn the
arrows between rooms (config uses wire, wire uses config) into import cycles.
mypy sees the names through the face's ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_face"]


def lazy_face(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``'s face.

    ``exports`` maps each re-exported name to the module of ``package`` that defines it.
    """

    def face_getattr(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def face_dir() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return face_getattr, face_dir
