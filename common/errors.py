"""Exceptions with messages meant for the person at the console."""

from __future__ import annotations

__all__ = ["ConfigError", "ConsortiaError", "DataError"]


class ConsortiaError(Exception):
    """Base class: a problem the user can fix, explained in its message."""


class ConfigError(ConsortiaError):
    """A config file or value is invalid; the message names the file and the field."""


class DataError(ConsortiaError):
    """A site's data set cannot be used; the message names the data set and the problem."""
