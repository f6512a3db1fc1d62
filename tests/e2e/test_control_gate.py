"""Red-team finding F0, attacked end to end: an outsider who reaches the server's port and
holds only the public `ca.pem` submits a Flower App of its own with `flwr run`. Its
ServerApp would write a file on the server's machine. `consortia server start` must run
none of its code: the public port serves the Fleet API only, and the loopback Control API
refuses any app that is not Consortia's installed one, recording the refusal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from consortia.common.audit.check import read_audit_log
from consortia.common.config.settings import load_run_settings
from consortia.common.errors import ConsortiaError
from consortia.server.control import SuperLinkConnection, flwr_json
from consortia.server.launch.submit import submit_run, write_app_dir
from consortia.server.launch.superlink_gate import API_REFUSED, APP_REFUSED, APP_STARTED
from tests.support.cli_federation import CliFederation

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_SERVER_APP = """
from pathlib import Path
from flwr.serverapp import ServerApp

Path({marker!r}).write_text("foreign code ran on the server")
app = ServerApp()


@app.main()
def main(grid, context):
    Path({marker!r}).write_text("foreign ServerApp ran on the server")
"""


def _foreign_app(folder: Path, marker: Path) -> Path:
    """A Flower App whose ServerApp writes `marker` as soon as it is imported."""
    folder.mkdir(parents=True)
    (folder / "evil_app.py").write_text(_SERVER_APP.format(marker=str(marker)))
    (folder / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools>=69"]\n'
        'build-backend = "setuptools.build_meta"\n'
        '[project]\nname = "evil"\nversion = "1.0.0"\ndescription = ""\n'
        'license = "Apache-2.0"\ndependencies = []\n'
        '[tool.flwr.app]\npublisher = "evil"\n'
        "[tool.flwr.app.components]\n"
        'serverapp = "evil_app:app"\nclientapp = "evil_app:app"\n'
        "[tool.flwr.app.config]\n"
    )
    return folder


def _consortia_app_with_code(folder: Path, marker: Path) -> Path:
    """Consortia's own components, plus a code file that would shadow them."""
    settings = load_run_settings(Path(__file__).parents[2] / "configs" / "run-segmentation.toml")
    write_app_dir(folder, settings, "shadow")
    shadow = folder / "consortia" / "server"
    shadow.mkdir(parents=True)
    (shadow / "server_app.py").write_text(_SERVER_APP.format(marker=str(marker)))
    return folder


def _runs(connection: SuperLinkConnection) -> list[object]:
    payload = flwr_json(connection, "ls", what="the run list")
    runs = payload.get("runs", [])
    return runs if isinstance(runs, list) else []


def test_an_outsider_cannot_run_code_on_the_server(
    tmp_path: Path, secured_server: CliFederation
) -> None:
    federation = secured_server
    assert federation.consortium is not None
    ca = federation.consortium.ca_certificate
    audit_log = federation.root / "server" / "audit.jsonl"
    earlier = len(read_audit_log(audit_log)) if audit_log.exists() else 0
    marker = tmp_path / "server-side-marker"
    foreign = _foreign_app(tmp_path / "foreign", marker)

    # 1. The outsider's way in: the public (Fleet) port, with only the public CA file.
    outsider = SuperLinkConnection.of(federation.superlink, tmp_path / "outsider", ca)
    with pytest.raises(ConsortiaError, match="refused the run"):
        submit_run(foreign, outsider, connect_timeout_s=30)
    refused = outsider.flwr("ls", "--format", "json", timeout=60)
    assert refused.returncode != 0 or '"success": false' in refused.stdout

    # 2. Defence in depth: even on the loopback Control API (someone on the server's own
    #    machine), a foreign app, and Consortia's app carrying a code file, are refused
    #    before Flower stores or loads them.
    local = SuperLinkConnection.of(federation.control, tmp_path / "local", ca)
    stored = _runs(local)  # the shared server's runs before this test's submissions
    with pytest.raises(ConsortiaError, match="ships files of its own"):
        submit_run(foreign, local, connect_timeout_s=30)
    # Only a pyproject.toml, naming installed code that is not Consortia's app.
    (foreign / "evil_app.py").unlink()
    pyproject = foreign / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("evil_app:app", "json:loads"))
    with pytest.raises(ConsortiaError, match="components"):
        submit_run(foreign, local, connect_timeout_s=30)
    shadowing = _consortia_app_with_code(tmp_path / "shadow", marker)
    with pytest.raises(ConsortiaError, match="ships files of its own"):
        submit_run(shadowing, local, connect_timeout_s=30)
    assert _runs(local) == stored  # Flower never stored a run

    # 3. Consortia's own app is still accepted there (and its run then waits for sites).
    settings = load_run_settings(Path(__file__).parents[2] / "configs" / "run-segmentation.toml")
    good = write_app_dir(tmp_path / "good", settings, "good")
    run_id = submit_run(good, local, connect_timeout_s=30)
    assert run_id > 0
    local.flwr("stop", str(run_id), timeout=60)

    time.sleep(3.0)  # the SuperExec would have picked a stored foreign run up by now
    assert not marker.exists(), marker.read_text()

    records = read_audit_log(audit_log)[earlier:]  # this test's records
    events = [record["event"] for record in records]
    assert events.count(APP_REFUSED) == 3, events
    assert API_REFUSED in events and APP_STARTED in events
    public = [r for r in records if r["event"] == API_REFUSED]
    assert all(r["listener"] == "public" for r in public)
    assert any("/v1/control/start-run" in r["path"] for r in public), json.dumps(public)
