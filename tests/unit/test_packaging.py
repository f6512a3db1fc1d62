"""The wheel installs server/, client/ and common/ as consortia.* only, with the Flower
app declared and the CLI wired through the entry points."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_has_one_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = list(tmp_path.glob("consortia-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_levels = {name.split("/")[0] for name in names}
    assert top_levels == {"consortia", next(n for n in top_levels if n.endswith(".dist-info"))}
    for package in ("server", "client", "common"):
        assert f"consortia/{package}/__init__.py" in names
    assert "consortia/client/client_app.py" in names
    assert "consortia/server/run/server_app.py" in names


def test_flower_app_and_cli_are_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    components = project["tool"]["flwr"]["app"]["components"]
    assert components == {
        "serverapp": "consortia.server.run.server_app:app",
        "clientapp": "consortia.client.client_app:app",
    }
    assert project["project"]["scripts"]["consortia"] == "consortia.common.cli:main"
    groups = {entry.name for entry in entry_points(group="consortia.cli")}
    assert groups == {"server", "client"}


def test_torch_range_admits_the_ci_build() -> None:
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [torch] = [Requirement(r) for r in project["project"]["dependencies"] if r.startswith("torch")]
    assert torch.specifier.contains("2.13.0")
