"""The SuperLink's app check (red-team F0, defence in depth): only a FAB that holds
Consortia's pyproject.toml and nothing else may start a run. Real FAB bytes, built by
Flower's own `flwr build` where it matters, and real StartRun protobuf messages."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from flwr.proto.control_pb2 import StartRunRequest

from consortia.common.config.settings import load_run_settings
from consortia.server.launch.app_gate import AppRefusedError, check_fab, check_start_run
from consortia.server.launch.submit import write_app_dir

_CONFIG = Path(__file__).parents[2] / "configs" / "run-segmentation.toml"


def _flower_fab(app_dir: Path) -> bytes:
    """The FAB that Flower's own CLI builds from `app_dir`."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("flwr")), "build"],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (fab,) = app_dir.glob("*.fab")
    content = fab.read_bytes()
    fab.unlink()
    return content


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def consortia_fab(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("fab") / "app"
    write_app_dir(folder, load_run_settings(_CONFIG), "study")
    return _flower_fab(folder)


def _files(fab: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(fab)) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def test_consortia_app_built_by_flower_passes(consortia_fab: bytes) -> None:
    checked = check_fab(consortia_fab)
    assert len(checked.fab_sha256) == 64
    request = StartRunRequest()
    request.fab.content = consortia_fab
    assert check_start_run(request.SerializeToString()) == checked


@pytest.mark.parametrize(
    "extra", ["evil.py", "consortia/server/server_app.py", "lib.so", "README.md", "x.pth"]
)
def test_any_other_file_in_the_bundle_is_refused(consortia_fab: bytes, extra: str) -> None:
    files = _files(consortia_fab) | {extra: b"import os"}
    with pytest.raises(AppRefusedError, match="ships files of its own"):
        check_fab(_zip(files))


def test_other_components_are_refused(consortia_fab: bytes) -> None:
    files = _files(consortia_fab)
    files["pyproject.toml"] = files["pyproject.toml"].replace(
        b"consortia.server.run.server_app:app", b"json:loads"
    )
    with pytest.raises(AppRefusedError, match="components"):
        check_fab(_zip(files))


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({".info/CONTENT": b""}, "no pyproject.toml"),
        ({"pyproject.toml": b"[tool"}, "not valid TOML"),
        ({"pyproject.toml": b"[project]\nname='x'\n"}, "no \\[tool.flwr.app.components\\]"),
    ],
)
def test_malformed_bundles_are_refused_with_the_reason(
    files: dict[str, bytes], reason: str
) -> None:
    with pytest.raises(AppRefusedError, match=reason):
        check_fab(_zip(files))


def test_not_a_zip_and_stored_or_hub_apps_are_refused() -> None:
    with pytest.raises(AppRefusedError, match="not a zip"):
        check_fab(b"not a zip")
    stored = StartRunRequest()
    stored.fab.hash_str = "ab" * 32  # a FAB stored earlier, referenced by hash only
    with pytest.raises(AppRefusedError, match="no app bundle"):
        check_start_run(stored.SerializeToString())
    hub = StartRunRequest(app_spec="@someone/app==1.0")
    with pytest.raises(AppRefusedError, match="app_spec"):
        check_start_run(hub.SerializeToString())
    with pytest.raises(AppRefusedError, match="not a valid StartRun"):
        check_start_run(b"\xff\xff\xff")
