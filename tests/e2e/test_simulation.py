"""`consortia run --simulation`: the same ServerApp and ClientApp on Flower's simulation
engine (Ray), many simulated sites, no SuperNodes. Skipped without the 'simulation' extra."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from consortia.common.demo.data import DemoDataSettings, write_site_npz

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="Flower's simulation engine needs the 'simulation' extra (Ray)",
    ),
]


def test_simulated_federation(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    data = DemoDataSettings(image_size=32, train_cases=12, test_cases=6)
    for index in range(5):
        name = f"sim-{index}"
        role = "holdout" if index == 4 else "train"
        write_site_npz(sites / f"{name}.npz", index, data)
        (sites / f"{name}.toml").write_text(
            f'[site]\nname = "{name}"\nrole = "{role}"\n[data]\npath = "{name}.npz"\n'
            # the node's state (privacy ledger, data cache) stays in the test's folder
            f'[node]\nstate_dir = "state-{name}"\n',
            encoding="utf-8",
        )
    run = tmp_path / "run.toml"
    run.write_text(
        '[run]\nname = "sim"\nrounds = 2\nmin_sites = 5\nsites_per_round = 2\n'
        "[run.model]\nchannels = [8, 16]\nstrides = [2]\nnorm_groups = 4\nnum_res_units = 0\n",
        encoding="utf-8",
    )
    runs = tmp_path / "runs"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "consortia.common.cli",
            "run",
            str(run),
            "--simulation",
            str(sites),
            "--runs-dir",
            str(runs),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [run_dir] = list(runs.iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert len(results["sites"]) == 5
    for entry in results["rounds"][1:]:
        assert len(entry["participants"]) == 2  # sites_per_round
        assert "sim-4" not in entry["participants"]
    assert results["rounds"][-1]["evaluation"]["holdout"]["cases"] == 18


def test_simulation_rejects_bad_sites_folder(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text("[run]\nrounds = 1\n", encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "consortia.common.cli",
            "run",
            str(run),
            "--simulation",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "not a folder of site configs" in result.stdout + result.stderr
