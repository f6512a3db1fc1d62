"""The site's cache: file hashes for cheap fingerprints, and preprocessed arrays.

Layout under the cache folder (local to the site, never sent anywhere):

- `file-hashes.json`: SHA-256 of each data file, keyed by absolute path and reused while
  the file's size and modification time (ns) are unchanged;
- `datasets/<manifest id>/<entry key>/`: `index.json` plus one `<split>.npz` per split
  (`images`, `targets`); the entry key hashes the data set fingerprint, the task and the
  preprocessing, so a changed file or setting means a new entry and stale ones are removed.

Every file is written atomically (temporary file, fsync, `os.replace`); `index.json` is
written last, so an entry without it does not exist. A cache file that cannot be read
or does not match its index is discarded and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from consortia.client.data.site_data import SiteArrays
from consortia.common.files import sha256_file, write_atomic

__all__ = ["ArrayCache", "FileHashCache"]

logger = logging.getLogger("consortia.client.data.cache")

CACHE_FORMAT = 1
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=1, sort_keys=True).encode()

    def _write(handle: IO[bytes]) -> None:
        handle.write(text)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, _write)


class FileHashCache:
    """SHA-256 of data files, remembered per (absolute path, size, mtime_ns).

    With no folder it remembers nothing across instances. `hits` and `misses` count
    lookups (a miss reads the whole file).
    """

    def __init__(self, cache_dir: Path | None) -> None:
        self.path = None if cache_dir is None else cache_dir / "file-hashes.json"
        self._entries: dict[str, list[Any]] = {}
        self._dirty = False
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if loaded.get("format") == CACHE_FORMAT:
                    self._entries = dict(loaded.get("files", {}))
            except (*_READ_ERRORS, AttributeError):
                logger.warning("file hash cache %s is unreadable; starting afresh", self.path)

    def digest(self, path: Path) -> str | None:
        """The file's SHA-256, or None when it is missing or unreadable."""
        try:
            info = path.stat()
        except OSError:
            return None
        key = str(path.resolve())
        known = self._entries.get(key)
        if known is not None and known[:2] == [info.st_size, info.st_mtime_ns]:
            self.hits += 1
            return str(known[2])
        try:
            value = sha256_file(path)
        except OSError:
            return None
        self.misses += 1
        self._entries[key] = [info.st_size, info.st_mtime_ns, value]
        self._dirty = True
        return value

    def save(self) -> None:
        """Persist new hashes (no-op without a folder or without changes)."""
        if self.path is None or not self._dirty:
            return
        try:
            _write_json(self.path, {"format": CACHE_FORMAT, "files": self._entries})
            self._dirty = False
        except OSError as err:
            logger.warning("cannot write the file hash cache %s: %s", self.path, err)


class ArrayCache:
    """Preprocessed arrays of one data set, one entry per fingerprint + settings."""

    def __init__(self, cache_dir: Path, dataset_id: str) -> None:
        self.folder = cache_dir / "datasets" / dataset_id

    @staticmethod
    def entry_key(fingerprint: str, settings: Mapping[str, Any]) -> str:
        """The entry for a fingerprint and everything else that shapes the arrays."""
        text = json.dumps(
            {"format": CACHE_FORMAT, "fingerprint": fingerprint, **settings}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def read_index(self, key: str) -> dict[str, Any] | None:
        """The entry's index, or None when there is no (readable) entry."""
        path = self.folder / key / "index.json"
        if not path.is_file():
            return None
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            if index.get("format") != CACHE_FORMAT or not isinstance(index.get("counts"), dict):
                raise ValueError("unexpected index format")
            return dict(index)
        except (*_READ_ERRORS, AttributeError) as err:
            logger.warning("discarding unreadable cache entry %s: %s", path.parent, err)
            self.discard(key)
            return None

    def read_split(self, key: str, split: str, count: int) -> SiteArrays | None:
        """One split's arrays, or None (and the entry discarded) when they are unusable."""
        path = self.folder / key / f"{split}.npz"
        try:
            with np.load(path, allow_pickle=False) as archive:
                images = np.asarray(archive["images"])
                targets = np.asarray(archive["targets"])
            if len(images) != count or len(targets) != count or images.dtype != np.float32:
                raise ValueError("arrays do not match the index")
        except _READ_ERRORS as err:
            logger.warning("discarding corrupt cache file %s: %s", path, err)
            self.discard(key)
            return None
        return SiteArrays(images, targets.astype(np.int64, copy=False))

    def write(self, key: str, arrays: Mapping[str, SiteArrays], index: Mapping[str, Any]) -> None:
        """Write an entry (split files first, index last) and remove stale entries of
        other fingerprints."""
        entry = self.folder / key
        entry.mkdir(parents=True, exist_ok=True)
        for split, data in arrays.items():

            def _save(handle: IO[bytes], data: SiteArrays = data) -> None:
                np.savez(handle, images=data.images, targets=data.targets)

            write_atomic(entry / f"{split}.npz", _save)
        _write_json(entry / "index.json", {**index, "format": CACHE_FORMAT})
        for other in self.folder.iterdir():
            if other.name == key or not other.is_dir():
                continue
            other_index = other / "index.json"
            try:
                stale = json.loads(other_index.read_text())["fingerprint"] != index["fingerprint"]
            except (*_READ_ERRORS, TypeError):
                stale = True
            if stale:
                shutil.rmtree(other, ignore_errors=True)

    def discard(self, key: str) -> None:
        """Remove an entry (only ever files this cache wrote)."""
        shutil.rmtree(self.folder / key, ignore_errors=True)
