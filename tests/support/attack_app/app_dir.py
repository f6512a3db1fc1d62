"""The Flower App (FAB folder) of a run with a malicious site.

It is the app `consortia run` submits (`consortia.server.launch.submit.write_app_dir`) with two
changes: `malicious_client.py` is copied into the folder (Flower bundles every `.py` file
of the app folder into the FAB and puts the installed folder first on `sys.path` when it
loads a component), the `clientapp` component is `malicious_client:app`, and the run
config (`[tool.flwr.app.config]`) names the attack and the attacking site.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from consortia.common.config.settings import RunSettings
from consortia.server.launch.submit import APP_COMPONENTS, write_app_dir
from tests.support.attack_app import malicious_client
from tests.support.attack_app.malicious_client import (
    ATTACK_KIND_KEY,
    ATTACK_SITE_KEY,
    ATTACKS,
    COMPONENT,
    NO_ATTACK,
)

__all__ = ["MODULE_SOURCE", "Attack", "write_attack_app_dir"]

MODULE_SOURCE = Path(malicious_client.__file__)


@dataclass(frozen=True)
class Attack:
    """Which site attacks, and how (one of `malicious_client.ATTACKS`)."""

    kind: str = NO_ATTACK
    site: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; one of {', '.join(ATTACKS)}")
        if self.kind != NO_ATTACK and not self.site:
            raise ValueError(f"attack {self.kind!r} needs the attacking site's name")


def write_attack_app_dir(
    dest: Path,
    settings: RunSettings,
    run_name: str,
    attack: Attack,
    simulation_sites: Sequence[Path] = (),
) -> Path:
    """Write the run's Flower App with the malicious ClientApp into `dest` (a new folder)."""
    write_app_dir(dest, settings, run_name, simulation_sites)
    (dest / MODULE_SOURCE.name).write_bytes(MODULE_SOURCE.read_bytes())
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    line = f"clientapp = {json.dumps(APP_COMPONENTS['clientapp'])}"
    if text.count(line) != 1:
        raise RuntimeError(f"{pyproject}: no single line {line!r} to replace")
    text = text.replace(line, f"clientapp = {json.dumps(COMPONENT)}")
    # `[tool.flwr.app.config]` is the file's last table: the keys go into it (checked below).
    text += f"{ATTACK_KIND_KEY} = {json.dumps(attack.kind)}\n"
    text += f"{ATTACK_SITE_KEY} = {json.dumps(attack.site)}\n"
    pyproject.write_text(text, encoding="utf-8")
    app = tomllib.loads(text)["tool"]["flwr"]["app"]
    expected = {ATTACK_KIND_KEY: attack.kind, ATTACK_SITE_KEY: attack.site}
    if app["components"]["clientapp"] != COMPONENT or any(
        app["config"].get(key) != value for key, value in expected.items()
    ):
        raise RuntimeError(f"{pyproject}: the attack did not end up in the app's config")
    return dest
