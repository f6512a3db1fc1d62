"""What identifies a run to a site that must approve it: a hash of the study's config and
a hash of the Consortia code that will run it.

`config_hash` is the SHA-256 of the canonical JSON (sorted keys, compact) of the validated
`RunSettings`, defaults filled in: the same for a RUN.toml loaded at the site and for the
settings the server sends in the Flower run config (`RunSettings.to_json()`, rebuilt by
`run_settings_from_json`). The timestamped run name is not part of the settings, so every
submission of one study has one config hash.

`app_hash` is the SHA-256 of the installed `consortia` version and the relative path and
SHA-256 of every `.py` file of `consortia.common`, `consortia.client` and
`consortia.server`: upgrading or editing Consortia changes it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortia.common.config.settings import RunSettings
from consortia.common.errors import ConsortiaError
from consortia.common.files import sha256_file

__all__ = [
    "APP_PACKAGES",
    "DISTRIBUTION",
    "SHORT_HASH_LENGTH",
    "RunIdentity",
    "app_hash",
    "app_hash_details",
    "canonical_settings_json",
    "config_hash",
    "hash_package_files",
    "package_roots",
    "short_hash",
]

DISTRIBUTION = "consortia"
APP_PACKAGES: tuple[str, ...] = ("consortia.common", "consortia.client", "consortia.server")
SHORT_HASH_LENGTH = 12


def short_hash(value: str) -> str:
    """The first 12 hex digits of a hash, for display."""
    return value[:SHORT_HASH_LENGTH]


def canonical_settings_json(settings: RunSettings) -> str:
    """The validated settings as canonical JSON: sorted keys, no spaces, defaults included."""
    return json.dumps(
        settings.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )


def config_hash(settings: RunSettings) -> str:
    """Hex SHA-256 of the study's config (`canonical_settings_json`)."""
    return hashlib.sha256(canonical_settings_json(settings).encode("utf-8")).hexdigest()


def _package_files(roots: Sequence[Path]) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for root in roots:
        if not root.is_dir():
            raise ConsortiaError(f"{root}: package folder not found")
        for path in root.rglob("*.py"):
            relative = path.relative_to(root)
            if "__pycache__" in relative.parts or not path.is_file():
                continue
            files.append((f"{root.name}/{relative.as_posix()}", path))
    files.sort(key=lambda item: item[0])
    return files


def _hash_files(files: Sequence[tuple[str, Path]], version: str) -> str:
    listing = [[name, sha256_file(path)] for name, path in files]
    text = json.dumps({"files": listing, "version": version}, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_package_files(roots: Sequence[Path], version: str) -> str:
    """Hex SHA-256 of a version string and the `.py` files under package folders: each
    file by `<root folder name>/<relative path>` and the SHA-256 of its bytes, sorted
    (`__pycache__` ignored)."""
    return _hash_files(_package_files(roots), version)


def package_roots(packages: Sequence[str] = APP_PACKAGES) -> list[Path]:
    """The folders the installed packages are imported from (editable install or wheel)."""
    roots: list[Path] = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if len(locations) != 1:
            raise ConsortiaError(f"package {name} is not installed as one folder: {locations}")
        roots.append(Path(locations[0]))
    return roots


def _installed_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ConsortiaError(f"the '{DISTRIBUTION}' distribution is not installed") from None


@functools.cache
def _app_identity() -> tuple[str, str, int]:
    version = _installed_version()
    files = _package_files(package_roots())
    return _hash_files(files, version), version, len(files)


def app_hash() -> str:
    """Hex SHA-256 of the Consortia code this process runs (computed once per process)."""
    return _app_identity()[0]


def app_hash_details() -> dict[str, Any]:
    """The app hash with what it covers, for provenance records."""
    digest, version, count = _app_identity()
    return {
        "app_hash": digest,
        "version": version,
        "packages": list(APP_PACKAGES),
        "files": count,
    }


@dataclass(frozen=True)
class RunIdentity:
    """The pair a site approves: the study's config hash and the app code hash."""

    config_hash: str
    app_hash: str

    @classmethod
    def of(cls, settings: RunSettings, app: str | None = None) -> RunIdentity:
        """The identity of a run of `settings` on this process's code (or on `app`)."""
        return cls(config_hash(settings), app_hash() if app is None else app)

    def short(self) -> str:
        """`config <12 hex> / app <12 hex>`, for display."""
        return f"config {short_hash(self.config_hash)} / app {short_hash(self.app_hash)}"
