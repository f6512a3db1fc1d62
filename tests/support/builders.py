"""Test helper: run and site configs (TOML) built from keyword arguments, and the
synthetic data set of a demo site.

Every e2e test and support module writes its configs through these builders, so that a
setting is spelled once (`SMALL_UNET`, `NO_DP`, `NON_PRIVATE`) and a test names only
what it varies. Values are written as TOML: strings (and paths) quoted, booleans
`true`/`false`, lists as arrays and mappings as inline tables."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, TypeAlias

from consortia.common.config.roster import site_fingerprint
from consortia.common.config.settings import load_site_settings
from consortia.common.demo.data import DemoDataSettings, write_site_npz

__all__ = [
    "NON_PRIVATE",
    "NO_DP",
    "SMALL_UNET",
    "TomlTable",
    "TomlValue",
    "demo_data",
    "roster_of",
    "run_toml",
    "site_toml",
    "toml_table",
    "toml_value",
]

TomlValue: TypeAlias = (
    "str | int | float | bool | Path | Sequence[TomlValue] | Mapping[str, TomlValue]"
)
TomlTable: TypeAlias = Mapping[str, TomlValue]

# The small 2D U-Net of the e2e tests (a few seconds a round on one core).
SMALL_UNET: Final[TomlTable] = {
    "channels": [8, 16],
    "strides": [2],
    "norm_groups": 4,
    "num_res_units": 0,
}
# `[run.privacy]` of a run without DP-SGD.
NO_DP: Final[TomlTable] = {"enabled": False}
# `[privacy]` of a site that accepts runs without DP.
NON_PRIVATE: Final[TomlTable] = {"allow_non_private": True}


def toml_value(value: TomlValue) -> str:
    """`value` as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, Mapping):
        pairs = ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items())
        return f"{{ {pairs} }}"
    return "[" + ", ".join(toml_value(item) for item in value) + "]"


def toml_table(header: str, values: TomlTable, *, array: bool = False) -> str:
    """`[header]` (or `[[header]]` when `array`) and one `key = value` line per item."""
    opening = f"[[{header}]]" if array else f"[{header}]"
    return "".join([f"{opening}\n", *(f"{key} = {toml_value(v)}\n" for key, v in values.items())])


def run_toml(
    name: str,
    *,
    rounds: int = 2,
    min_sites: int = 3,
    model: TomlTable | None = SMALL_UNET,
    training: TomlTable | None = None,
    privacy: TomlTable | None = None,
    secure_aggregation: TomlTable | None = None,
    tables: Mapping[str, TomlTable] | None = None,
    sites: Sequence[TomlTable] = (),
    **run: TomlValue,
) -> str:
    """A run config: `[run]` with `name`, `rounds`, `min_sites` and the other `run` keys,
    then `[run.model]`, `[run.training]`, `[run.privacy]`, `[run.secure_aggregation]`,
    each of `tables` as `[run.KEY]`, and one `[[run.sites]]` per roster entry. A table
    given as None is left out (the product's defaults apply)."""
    sections = {
        "model": model,
        "training": training,
        "privacy": privacy,
        "secure_aggregation": secure_aggregation,
        **(tables or {}),
    }
    parts = [toml_table("run", {"name": name, "rounds": rounds, "min_sites": min_sites, **run})]
    parts += [toml_table(f"run.{key}", t) for key, t in sections.items() if t is not None]
    parts += [toml_table("run.sites", site, array=True) for site in sites]
    return "".join(parts)


def roster_of(configs: Sequence[Path]) -> list[TomlTable]:
    """`[[run.sites]]` tables listing the sites of these site configs, as training sites,
    with their keys' fingerprints."""
    tables: list[TomlTable] = []
    for config in configs:
        site = load_site_settings(config)
        fingerprint = site_fingerprint(site.node.key)
        if fingerprint is None:
            raise ValueError(f"{config}: the site has no key")
        tables.append({"name": site.site.name, "fingerprint": fingerprint, "role": "train"})
    return tables


def site_toml(
    name: str,
    *,
    data: str | Path,
    role: str | None = None,
    node: TomlTable | None = None,
    privacy: TomlTable | None = None,
    tables: Mapping[str, TomlTable] | None = None,
) -> str:
    """A site config: `[site]` (`name`, `role` unless None), `[data] path`, `[node]`,
    `[privacy]` and each of `tables` (e.g. `saliency`) as `[KEY]`."""
    site: dict[str, TomlValue] = {"name": name}
    if role is not None:
        site["role"] = role
    sections = {"node": node, "privacy": privacy, **(tables or {})}
    parts = [toml_table("site", site), toml_table("data", {"path": data})]
    parts += [toml_table(key, t) for key, t in sections.items() if t is not None]
    return "".join(parts)


def demo_data(
    path: Path, index: int, *, train_cases: int = 16, test_cases: int = 8, image_size: int = 32
) -> Path:
    """Write demo site `index`'s synthetic data set (segmentation, `image_size` pixels
    square) to `path`; returns `path`."""
    settings = DemoDataSettings(
        image_size=image_size, train_cases=train_cases, test_cases=test_cases
    )
    return write_site_npz(path, index, settings)
