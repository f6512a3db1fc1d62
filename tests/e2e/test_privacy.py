"""Differential privacy through the real runtime: `consortia server start`, one
`consortia node start` per site, `consortia run` and `consortia audit privacy`.

Run 1: a site whose limit allows one round refuses the second; the run continues without
it and records why. The nodes are then stopped and started again, and run 2 shows that
the ledgers survived: epsilon continues where run 1 left it, the exhausted site refuses
again, and with `min_training_sites = 2` training ends cleanly. The auditor's report
recomputes every number and finds the server's records and the ledgers consistent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consortia.common.privacy.accounting import epsilon_of, poisson_plan
from consortia.common.privacy.ledger import PrivacyLedger
from tests.support.builders import run_toml
from tests.support.cli import consortia
from tests.support.cli_federation import CliFederation
from tests.support.federation import SiteSpec, add_sites

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRAIN_CASES = 16
BATCH = 8
SIGMA = 1.0
DELTA = 1e-3  # below 1/N for 16 examples


def _site(name: str, role: str, limit: float) -> SiteSpec:
    policy = {"max_epsilon": limit, "delta": DELTA}
    return SiteSpec(name, role=role, train_cases=TRAIN_CASES, privacy=policy)


def _run_config(name: str, min_training_sites: int | None = None) -> str:
    run: dict[str, Any] = {}
    if min_training_sites is not None:
        run["min_training_sites"] = min_training_sites
    return run_toml(
        name,
        training={"batch_size": BATCH},
        privacy={"noise_multiplier": SIGMA, "max_grad_norm": 1.0},
        **run,
    )


def _ledger(root: Path, name: str) -> Path:
    [path] = (root / name / "state" / "privacy").glob("*.json")
    return path


def _audit(run_dir: Path, *ledgers: Path) -> tuple[int, dict]:
    args: list[str | Path] = ["audit", "privacy", run_dir, "--json"]
    for ledger in ledgers:
        args += ["--ledger", ledger]
    result = consortia(*args, timeout=300)
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout)


def _check_first_run(
    first: dict[str, Any], tmp_path: Path, steps: int, epsilons: tuple[float, float]
) -> None:
    """Run 1: south, with room for one round, refuses the second; east spends nothing."""
    eps_1, eps_2 = epsilons
    assert first["status"] == "completed"
    rounds = {entry["round"]: entry for entry in first["rounds"]}
    assert rounds[1]["participants"] == ["north", "south"]
    assert rounds[2]["participants"] == ["north"]
    assert "privacy budget" in rounds[2]["left_out"]["south"]
    south = first["privacy"]["sites"]["south"]
    assert "over the site's limit" in south["excluded"]
    assert rounds[1]["privacy"]["south"]["epsilon"] == pytest.approx(eps_1, rel=1e-9)
    assert rounds[2]["privacy"]["north"]["epsilon"] == pytest.approx(eps_2, rel=1e-9)
    assert rounds[2]["privacy"]["north"]["steps"] == steps
    # the held-out site never spends budget
    assert "east" not in first["privacy"]["sites"]
    assert not (tmp_path / "east" / "state" / "privacy").exists() or not list(
        (tmp_path / "east" / "state" / "privacy").glob("*.json")
    )


def test_budgets_are_enforced_persisted_and_audited(
    tmp_path: Path, federation: CliFederation
) -> None:
    plan = poisson_plan(TRAIN_CASES, BATCH)
    one_round = (SIGMA, plan.sample_rate, plan.steps(1))
    eps_1 = epsilon_of([one_round], DELTA, "rdp")
    eps_2 = epsilon_of([one_round, one_round], DELTA, "rdp")
    south_limit = (eps_1 + eps_2) / 2  # room for exactly one round
    federation.start_server()
    configs = add_sites(
        federation,
        [
            _site("north", "train", 1000.0),
            _site("south", "train", south_limit),
            _site("east", "holdout", 1000.0),
        ],
    )

    first = federation.run("dp-one", _run_config("dp-one"))
    _check_first_run(first, tmp_path, plan.steps(1), (eps_1, eps_2))

    code, report = _audit(first["dir"], _ledger(tmp_path, "north"), _ledger(tmp_path, "south"))
    assert code == 0, report["flags"]

    # Restart every node: the ledgers on disk carry the spending into the next run.
    federation.stop_nodes()
    federation.start_nodes(configs)
    second = federation.run("dp-two", _run_config("dp-two", min_training_sites=2))
    assert second["privacy"]["sites"]["north"]["epsilon_before_run"] == pytest.approx(eps_2)
    assert second["status"] == "completed"
    assert "min_training_sites=2" in second["ended_early"]
    second_rounds = {entry["round"]: entry for entry in second["rounds"]}
    assert sorted(second_rounds) == [0, 1]  # round 2 never started
    assert second_rounds[1]["participants"] == ["north"]
    assert second_rounds[1]["evaluation"]["holdout"]["cases"] > 0  # final evaluation ran
    north_entries = PrivacyLedger.load(_ledger(tmp_path, "north")).entries
    assert [(e.run_id == first["run_name"], e.round) for e in north_entries] == [
        (True, 1),
        (True, 2),
        (False, 1),
    ]
    eps_3 = epsilon_of([one_round] * 3, DELTA, "rdp")
    assert north_entries[-1].epsilon == pytest.approx(eps_3, rel=1e-9)
    assert north_entries[-1].run_epsilon == pytest.approx(eps_1, rel=1e-9)

    code, report = _audit(second["dir"], _ledger(tmp_path, "north"), _ledger(tmp_path, "south"))
    assert code == 0, report["flags"]

    # An altered ledger is caught by the auditor.
    ledger = _ledger(tmp_path, "north")
    state = json.loads(ledger.read_text())
    state["entries"][0]["epsilon"] = 0.01
    ledger.write_text(json.dumps(state))
    code, report = _audit(second["dir"], ledger)
    assert code == 1
    assert report["flags"]
