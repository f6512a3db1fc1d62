"""`consortia run --simulation`: the same ServerApp and ClientApp on Flower's simulation
engine (Ray), many simulated sites, no SuperNodes. Skipped without the 'simulation' extra."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.support.builders import run_toml
from tests.support.cli import consortia, output_of
from tests.support.federation import SiteSpec, write_simulation_sites

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
    # the node's state (privacy ledger, data cache) stays in the test's folder
    write_simulation_sites(
        sites,
        [
            SiteSpec(
                f"sim-{index}",
                role="holdout" if index == 4 else "train",
                train_cases=12,
                test_cases=6,
                privacy=None,
            )
            for index in range(5)
        ],
    )
    run = tmp_path / "run.toml"
    run.write_text(run_toml("sim", min_sites=5, sites_per_round=2), encoding="utf-8")
    runs = tmp_path / "runs"
    result = consortia("run", run, "--simulation", sites, "--runs-dir", runs, timeout=900)
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
    result = consortia("run", run, "--simulation", tmp_path / "none")
    assert result.returncode == 2
    assert "not a folder of site configs" in output_of(result)
