"""Test helper: open a page in Debian's headless Chromium and read back what it rendered
(the DOM after parsing, and a screenshot)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

__all__ = ["RenderedPage", "chromium", "render_page"]

# As the machine's notes advise: no sandbox as root, no background network traffic.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str:
    """The Chromium binary, or skip the test with the reason."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Debian's chromium package is not installed (.ci/run installs it)")


class _Tables(HTMLParser):
    """Rows of every table with an id, as lists of cell texts; img elements' attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "table" and "id" in values:
            self._table = values["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(values)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@dataclass(frozen=True)
class RenderedPage:
    dom: str
    tables: dict[str, list[list[str]]]
    images: list[dict[str, str]]
    screenshot: np.ndarray  # (H, W, 3) uint8

    def colourful_pixels(self) -> int:
        """Pixels clearly away from grey: plot lines and bars, not text or borders."""
        rgb = self.screenshot.astype(np.int16)
        return int(np.sum(rgb.max(axis=2) - rgb.min(axis=2) > 60))


def render_page(page: Path, *, width: int = 1280, height: int = 6000) -> RenderedPage:
    """Chromium's DOM of `page` after loading it, and a screenshot of its first `height`
    pixels."""
    binary = chromium()
    with tempfile.TemporaryDirectory() as profile:
        common = [binary, *_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*common, "--dump-dom", page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        shot = Path(profile) / "shot.png"
        subprocess.run(
            [
                *common,
                f"--window-size={width},{height}",
                f"--screenshot={shot}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
        with Image.open(shot) as image:
            pixels = np.asarray(image.convert("RGB"))
    parser = _Tables()
    parser.feed(dom)
    return RenderedPage(dom, parser.tables, parser.images, pixels)
