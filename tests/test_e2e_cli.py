"""The deployment path as separate commands: `consortia server start`, one
`consortia node start` per site and `consortia run`, all real processes on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortia.common.demo_data import DemoDataSettings, write_site_npz
from consortia.common.processes import free_port, wait_for_address

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLI = [sys.executable, "-m", "consortia.common.cli"]


@pytest.fixture()
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in reversed(started):
        process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _site(tmp_path: Path, name: str, index: int, role: str, superlink: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    write_site_npz(
        folder / "data.npz", index, DemoDataSettings(image_size=32, train_cases=16, test_cases=8)
    )
    config = folder / "site.toml"
    config.write_text(
        f'[site]\nname = "{name}"\nrole = "{role}"\n[data]\npath = "data.npz"\n'
        f'[node]\nsuperlink = "{superlink}"\nstate_dir = "state"\n'
        f"runtime_port = {free_port()}\n",
        encoding="utf-8",
    )
    return config


def test_server_nodes_and_run_commands(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    runs = tmp_path / "runs"
    log = (tmp_path / "server.log").open("wb")
    processes.append(
        subprocess.Popen(
            [
                *CLI,
                "server",
                "start",
                "--port",
                str(port),
                "--runs-dir",
                str(runs),
                "--state-dir",
                str(tmp_path / "server"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    for index, (name, role) in enumerate(
        [("north", "train"), ("south", "train"), ("east", "holdout")]
    ):
        config = _site(tmp_path, name, index, role, superlink)
        node_log = (tmp_path / f"{name}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [*CLI, "node", "start", "--site-config", str(config), "--num-threads", "1"],
                stdout=node_log,
                stderr=subprocess.STDOUT,
            )
        )
    run_config = tmp_path / "run.toml"
    run_config.write_text(
        '[run]\nname = "cli-test"\nrounds = 2\nmin_sites = 3\n'
        "[run.model]\nchannels = [8, 16]\nstrides = [2]\nnorm_groups = 4\nnum_res_units = 0\n"
        "[run.training]\nbatch_size = 8\n",
        encoding="utf-8",
    )
    wait_for_address(superlink, 60.0)
    result = subprocess.run(
        [*CLI, "run", str(run_config), "--superlink", superlink, "--runs-dir", str(runs)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [run_dir] = list(runs.iterdir())
    assert run_dir.name.startswith("cli-test-")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert {s["name"]: s["role"] for s in results["sites"]} == {
        "north": "train",
        "south": "train",
        "east": "holdout",
    }
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    assert results["rounds"][2]["evaluation"]["holdout"]["cases"] == 24
    # the nodes kept their Flower state and logs where the site config said
    assert (tmp_path / "north" / "state" / "logs" / "supernode.log").is_file()


def test_cli_reports_config_errors_by_field(tmp_path: Path) -> None:
    bad = tmp_path / "run.toml"
    bad.write_text("[run]\nrounds = 2\nlocal_epochs = 3\n", encoding="utf-8")
    result = subprocess.run(
        [*CLI, "run", str(bad)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2
    assert "run.toml [run]: local_epochs: unknown key" in result.stderr + result.stdout

    missing = subprocess.run(
        [*CLI, "node", "start", "--site-config", str(tmp_path / "x.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 2
    assert "config file not found" in missing.stderr + missing.stdout
