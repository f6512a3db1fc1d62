"""Logging for every Consortia process: rich on a terminal, plain UTC lines in files."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.logging import RichHandler

__all__ = ["UTCFormatter", "add_file_handler", "setup_logging", "utc_now"]


_CONSOLE_MARK = "_consortia_console"


class UTCFormatter(logging.Formatter):
    """ISO-8601 timestamps in UTC, whatever the machine's time zone."""

    def __init__(self) -> None:
        super().__init__(
            fmt="%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
        self.converter = time.gmtime


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the `consortia` logger once: rich output on a terminal (sharing rich's
    console, so live progress displays and log lines do not garble each other), plain UTC
    lines on stderr otherwise (a service's journal, a log file, a test), never wrapped."""
    logger = logging.getLogger("consortia")
    logger.setLevel(level)
    if not any(getattr(h, _CONSOLE_MARK, False) for h in logger.handlers):
        handler: logging.Handler
        if sys.stdout.isatty():
            handler = RichHandler(
                show_path=False,
                rich_tracebacks=False,
                log_time_format="%X",
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(UTCFormatter())
        setattr(handler, _CONSOLE_MARK, True)
        logger.addHandler(handler)
    logger.propagate = False
    # pydicom warns about invalid elements with their values: keep that off the logs.
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def add_file_handler(path: Path, level: int = logging.INFO) -> logging.Handler:
    """Also write `consortia` logs to a file (UTC timestamps); returns the handler."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(UTCFormatter())
    handler.setLevel(level)
    logging.getLogger("consortia").addHandler(handler)
    return handler


def utc_now() -> str:
    """ISO-8601 UTC timestamp with a Z suffix (every record and audit line uses it)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
