"""Saliency maps of the final global model at a held-out site (`[saliency]` of the site
config): drawn during the final evaluation, kept in the node's state folder as
`<state>/saliency/<run>/case-NN.png` (`<run>`: the server's run folder name), and put in
the reply only where the site allows it (`share = true`). Every map written or sent is
recorded in the node's audit log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from consortia.client.data.site_data import SiteArrays
from consortia.client.node.audit import node_audit_for
from consortia.client.release_cache import SAFE_RUN_ID
from consortia.client.saliency.gradcam import saliency_maps, select_cases, write_saliency_png
from consortia.common.config.settings import Role, SiteSettings
from consortia.common.files import sha256_file
from consortia.common.wire.instructions import Instruction

__all__ = [
    "SALIENCY_DIR",
    "SALIENCY_WRITTEN",
    "saliency_name",
    "saliency_record",
    "write_final_saliency",
]

logger = logging.getLogger("consortia.client")

SALIENCY_DIR: Final = "saliency"
SALIENCY_WRITTEN: Final = "saliency_written"


def saliency_name(index: int) -> str:
    """The name of the `index`-th map of a run: its file stem and its array name."""
    return f"case-{index:02d}"


def write_final_saliency(
    model: torch.nn.Module,
    data: SiteArrays,
    instruction: Instruction,
    site: SiteSettings,
    device: torch.device,
) -> list[Path]:
    """Draw and keep the maps when this is a held-out site's final evaluation and its
    config asks for any; the PNG files written (none otherwise). A failure is logged here
    and costs the maps only, never the evaluation."""
    count = site.saliency.images
    final = instruction.round > instruction.total_rounds
    if not final or count == 0 or site.site.role is not Role.HOLDOUT or len(data) == 0:
        return []
    run = instruction.run_id or instruction.run_name  # the run folder's name, when sent
    if not SAFE_RUN_ID.fullmatch(run):
        logger.warning("saliency maps not drawn: the run id is not a valid run name")
        return []
    folder = site.state_path / SALIENCY_DIR / run
    try:
        cases = select_cases(len(data), count, instruction.seed)
        images = torch.from_numpy(np.ascontiguousarray(data.images[cases]))
        maps = saliency_maps(model, images, instruction.task, device=device)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths = [
            write_saliency_png(saliency, folder / f"{saliency_name(index)}.png")
            for index, saliency in enumerate(maps)
        ]
    except (RuntimeError, ValueError, OSError) as err:
        logger.warning("saliency maps not drawn: %s", err)
        return []
    node_audit_for(site).append(
        SALIENCY_WRITTEN,
        run=run,
        images=len(paths),
        shared=site.saliency.share,
        sha256=[sha256_file(path) for path in paths],
    )
    logger.info(
        "%d saliency maps of the final model kept in %s%s",
        len(paths),
        folder,
        " and sent to the server ([saliency] share = true)" if site.saliency.share else "",
    )
    return paths


def saliency_record(paths: list[Path]) -> ArrayRecord:
    """The maps' PNG bytes as uint8 arrays named `case-NN`, for the reply."""
    return ArrayRecord(
        {
            saliency_name(index): Array(np.frombuffer(path.read_bytes(), dtype=np.uint8).copy())
            for index, path in enumerate(paths)
        }
    )
