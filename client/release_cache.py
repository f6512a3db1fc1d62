"""The update a site last released in each run, kept at the site.

When the server crashes after a site trained round r, `consortia run --resume` asks for
round r again, from the same global model. Training again would spend privacy budget a
second time and put the round twice in the site's ledger. Instead the site sends the
update it already released: sending a released output again is post-processing and costs
no privacy. The file never leaves the site; only its content did, once, already.

One file per run (`<state>/releases/<run>.npz`, mode 0600), replaced atomically by each
DP round; it holds the round, the SHA-256 of the global model it started from, the
trained weights, the train metrics and the privacy record that went with them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from consortia.common.errors import ConsortiaError
from consortia.common.files import write_atomic
from consortia.common.privacy.ledger import PrivacyLedger

__all__ = [
    "RELEASES_DIR",
    "SAFE_RUN_ID",
    "Release",
    "ReleaseCache",
    "ReleaseCacheError",
    "kept_release",
    "model_sha256",
]

RELEASES_DIR = "releases"  # in the node's state folder

# A run id the server sent that may name a file or folder in the node's state folder.
SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ReleaseCacheError(ConsortiaError):
    """A kept release is unreadable, or belongs to another global model."""


def model_sha256(weights: np.ndarray) -> str:
    """SHA-256 of a flat weight vector's bytes (the global model a round starts from)."""
    return hashlib.sha256(np.ascontiguousarray(weights).tobytes()).hexdigest()


@dataclass(frozen=True)
class Release:
    """What the site sent for one round: weights, train metrics, privacy record."""

    round: int
    global_sha256: str
    weights: np.ndarray
    metrics: dict[str, float]
    privacy: dict[str, Any]


class ReleaseCache:
    """The last DP release per run in `folder` (the node's `releases/` folder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, run_id: str) -> Path:
        if not SAFE_RUN_ID.fullmatch(run_id):
            raise ReleaseCacheError("run id is not a valid run name")
        return self.folder / f"{run_id}.npz"

    def save(self, run_id: str, release: Release) -> None:
        """Keep `release` as this run's latest (atomically; owner-only file)."""
        path = self._path(run_id)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        header = {
            "round": release.round,
            "global_sha256": release.global_sha256,
            "metrics": release.metrics,
            "privacy": release.privacy,
        }
        arrays = {
            "weights": np.ascontiguousarray(release.weights),
            "header": np.asarray(json.dumps(header, sort_keys=True)),
        }
        write_atomic(path, lambda handle: np.savez(handle, allow_pickle=False, **arrays))
        os.chmod(path, 0o600)

    def load(self, run_id: str, round_number: int, global_sha256: str) -> Release | None:
        """The release of `round_number` in this run, or None if the site kept none for
        it; raises `ReleaseCacheError` if the kept one started from another model."""
        path = self._path(run_id)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                weights = archive["weights"]
                header = json.loads(str(archive["header"]))
            release = Release(
                round=int(header["round"]),
                global_sha256=str(header["global_sha256"]),
                weights=weights,
                metrics={str(k): float(v) for k, v in header["metrics"].items()},
                privacy=dict(header["privacy"]),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ReleaseCacheError(f"the kept release of this run is unreadable ({err})") from None
        if release.round != round_number:
            return None
        if release.global_sha256 != global_sha256:
            raise ReleaseCacheError(
                f"round {round_number} was released from another global model; the server's "
                "model for this round differs from the one the site trained"
            )
        return release


def kept_release(
    cache: ReleaseCache,
    ledger: PrivacyLedger,
    run_id: str,
    round_number: int,
    global_sha256: str,
) -> Release | None:
    """None when the ledger has no entry for this run's round (train it); otherwise the
    update released for it, to send again. Raises `ReleaseCacheError` when the round is
    in the ledger but its release is gone or started from another model: the site then
    sits the round out rather than count it twice."""
    if not any(e.run_id == run_id and e.round == round_number for e in ledger.entries):
        return None
    kept = cache.load(run_id, round_number, global_sha256)
    if kept is None:
        raise ReleaseCacheError(
            f"round {round_number} of this run is already in the site's privacy ledger and "
            "its update is no longer kept; the site will not train it a second time"
        )
    return kept
