"""Saliency maps that a held-out site chose to share (`[saliency] share = true` in its
site config): checked to be PNG pictures of bounded size, kept in the run folder as
`saliency/<site>/case-NN.png` and recorded in the audit log. Anything else is refused
with its reason; the run goes on."""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Mapping
from functools import partial
from typing import IO, Final

import numpy as np
from flwr.app import Message
from PIL import Image, UnidentifiedImageError

from consortia.common.config.names import InvalidNameError, site_path
from consortia.common.config.settings import Role
from consortia.common.files import write_atomic
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import RecordFieldError, get_array, get_array_record
from consortia.server.exchange.sites import Site
from consortia.server.run.folder import SALIENCY_DIR, RunFolder

__all__ = [
    "MAX_MAPS",
    "MAX_PNG_BYTES",
    "SALIENCY_RECEIVED",
    "SALIENCY_REFUSED",
    "SaliencyError",
    "check_png",
    "store_saliency",
]

logger = logging.getLogger("consortia.server")

SALIENCY_RECEIVED: Final = "saliency_received"
SALIENCY_REFUSED: Final = "saliency_refused"
MAX_MAPS: Final = 32
MAX_PNG_BYTES: Final = 4 << 20
_MAX_PIXELS: Final = 4096 * 4096
_NAME: Final = re.compile(r"^case-\d{2}$")


class SaliencyError(ValueError):
    """A shared saliency map that is not a small PNG picture."""


def check_png(name: str, data: np.ndarray) -> bytes:
    """The PNG file's bytes, after checking the array and the picture it holds."""
    if not _NAME.match(name):
        raise SaliencyError(f"map name {name!r} is not case-NN")
    if data.dtype != np.uint8 or data.ndim != 1:
        raise SaliencyError(f"{name}: not PNG bytes (uint8 vector), got {data.dtype} {data.shape}")
    if data.size > MAX_PNG_BYTES:
        raise SaliencyError(f"{name}: {data.size} bytes, more than {MAX_PNG_BYTES}")
    raw = data.tobytes()
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format != "PNG":
                raise SaliencyError(f"{name}: a {image.format} picture, not PNG")
            if image.width * image.height > _MAX_PIXELS:
                raise SaliencyError(f"{name}: {image.width}x{image.height} pixels, too large")
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise SaliencyError(f"{name}: not a readable PNG ({err})") from None
    return raw


def _write_bytes(data: bytes, handle: IO[bytes]) -> None:
    handle.write(data)


def _maps(reply: Message) -> dict[str, bytes]:
    record = get_array_record(reply.content, rk.SALIENCY_KEY)
    if len(record) > MAX_MAPS:
        raise SaliencyError(f"{len(record)} maps, more than {MAX_MAPS}")
    return {name: check_png(name, get_array(record, name)) for name in sorted(record)}


def store_saliency(
    folder: RunFolder, sites: Mapping[int, Site], replies: Mapping[int, Message]
) -> int:
    """Keep the maps shared in the final evaluation's `replies`; how many were kept."""
    kept = 0
    for node_id, reply in replies.items():
        if reply.has_error() or rk.SALIENCY_KEY not in reply.content or node_id not in sites:
            continue
        site = sites[node_id]
        try:
            if site.role is not Role.HOLDOUT:
                raise SaliencyError("only held-out sites share saliency maps")
            maps = _maps(reply)
            # The site's declared name becomes a folder: checked here too (issue 19, F14).
            target = site_path(folder.path / SALIENCY_DIR, site.name)
        except (SaliencyError, RecordFieldError, InvalidNameError) as err:
            logger.warning("saliency maps from node %d refused: %s", node_id, err)
            folder.event(SALIENCY_REFUSED, site=site.name, reason=str(err))
            continue
        target.mkdir(parents=True, exist_ok=True)
        digests = []
        for name, png in maps.items():
            path = target / f"{name}.png"
            write_atomic(path, partial(_write_bytes, png))
            digests.append(hashlib.sha256(png).hexdigest())
        folder.event(SALIENCY_RECEIVED, site=site.name, images=len(maps), sha256=digests)
        logger.info("%d saliency maps shared by %s kept in the run folder", len(maps), site.name)
        kept += len(maps)
    return kept
