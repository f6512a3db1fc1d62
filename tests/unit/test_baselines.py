"""The baselines of a simulated study (`consortia run --simulation --baselines`): the
pooled and local-only site sets, their settings, and the `baselines` section that
results.json and the report carry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from consortia.common.config.settings import (
    Role,
    RosterEntry,
    RunSettings,
    load_site_settings,
)
from consortia.common.errors import ConfigError
from consortia.server.launch.baselines import (
    POOLED,
    baseline_result,
    baseline_settings,
    plan_baselines,
    record_baselines,
)
from consortia.server.report.data import build_report
from consortia.server.report.page import render_html
from consortia.server.run.record import RunRecord
from tests.support.federation import SiteSpec, write_simulation_sites

TRAIN_CASES, TEST_CASES = 6, 3


def _sites(folder: Path, holdouts: int = 1) -> list[Path]:
    specs = [
        SiteSpec(f"site-{index}", train_cases=TRAIN_CASES, test_cases=TEST_CASES)
        for index in range(3)
    ]
    specs += [
        SiteSpec(f"held-{index}", role="holdout", train_cases=TRAIN_CASES, test_cases=TEST_CASES)
        for index in range(holdouts)
    ]
    return write_simulation_sites(folder, specs)


def test_plans_pooled_and_one_local_baseline_per_training_site(tmp_path: Path) -> None:
    configs = _sites(tmp_path / "sites")
    work = tmp_path / "work"
    plans = plan_baselines(configs, RunSettings(), work)
    assert [plan.label for plan in plans] == [
        POOLED,
        "local-site-0",
        "local-site-1",
        "local-site-2",
    ]
    pooled = plans[0]
    assert pooled.training_sites == ("site-0", "site-1", "site-2")
    sites = [load_site_settings(path) for path in pooled.configs]
    assert [(s.site.name, s.site.role) for s in sites] == [
        (POOLED, Role.TRAIN),
        ("held-0", Role.HOLDOUT),
    ]
    with np.load(sites[0].data.path) as joined:
        assert joined["train_images"].shape[0] == 3 * TRAIN_CASES
        assert joined["test_masks"].shape[0] == 3 * TEST_CASES
        with np.load(tmp_path / "sites" / "site-1.npz") as one:
            np.testing.assert_array_equal(
                joined["train_images"][TRAIN_CASES : 2 * TRAIN_CASES], one["train_images"]
            )
    for plan in plans:
        for path in plan.configs:
            site = load_site_settings(path)
            # every baseline site keeps its node state (privacy ledger) in the work folder
            assert site.state_path.is_relative_to(work)
    # a held-out site evaluates a study's round once: each baseline has its own node state
    held_states = {load_site_settings(plan.configs[-1]).state_path for plan in plans}
    assert len(held_states) == len(plans)
    local = plans[2]
    assert local.training_sites == ("site-1",)
    trainer = load_site_settings(local.configs[0])
    assert trainer.site.name == "site-1"
    assert trainer.data.path == (tmp_path / "sites" / "site-1.npz").resolve()


def test_needs_a_held_out_site(tmp_path: Path) -> None:
    configs = _sites(tmp_path / "sites", holdouts=0)
    with pytest.raises(ConfigError, match="held-out site"):
        plan_baselines(configs, RunSettings(), tmp_path / "work")


def test_refuses_manifests_naming_the_site(tmp_path: Path) -> None:
    folder = tmp_path / "sites"
    folder.mkdir()
    (folder / "cases.toml").write_text("[dataset]\n", encoding="utf-8")
    specs = [
        SiteSpec("site-0", train_cases=TRAIN_CASES, test_cases=TEST_CASES),
        SiteSpec("site-1", data="cases.toml"),
        SiteSpec("held", role="holdout", train_cases=TRAIN_CASES, test_cases=TEST_CASES),
    ]
    configs = write_simulation_sites(folder, specs)
    with pytest.raises(ConfigError, match="site site-1 uses the manifest"):
        plan_baselines(configs, RunSettings(), tmp_path / "work")


def test_settings_keep_the_recipe_and_let_every_baseline_site_take_part(tmp_path: Path) -> None:
    configs = _sites(tmp_path / "sites")
    study = RunSettings.model_validate(
        dict(
            rounds=7,
            min_sites=4,
            sites_per_round=2,
            sites=tuple(
                RosterEntry(name=f"site-{i}", fingerprint=f"SHA256:{'A' * 42}{i}") for i in range(4)
            ),
            secure_aggregation={"mode": "auto"},
            training={"optimizer": "sgd", "learning_rate": 0.05, "schedule": "poly"},
        )
    )
    plan = plan_baselines(configs, study, tmp_path / "work")[1]
    settings = baseline_settings(study, plan)
    assert settings.min_sites == 2 and settings.sites_per_round == 0
    assert settings.sites == ()  # the baseline's sites are not the study's roster
    assert settings.secure_aggregation.mode == "off"
    assert settings.training == study.training and settings.rounds == 7
    assert settings.model == study.model and settings.privacy == study.privacy


def _results(path: Path, dice: float, interval: list[float]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    record = {
        "schema": "consortia.results/1",
        "run_name": path.name,
        "task": "segmentation",
        "settings": json.loads(RunSettings(rounds=1).to_json()),
        "status": "completed",
        "started_at": "2026-12-07T10:00:00Z",
        "finished_at": "2026-12-07T10:01:30Z",
        "sites": [
            {"name": "site-0", "role": "train"},
            {"name": "held-0", "role": "holdout"},
        ],
        "rounds": [
            {"round": 0, "evaluation": {"holdout": {"dice": 0.05, "cases": 9}}},
            {
                "round": 1,
                "evaluation": {
                    "sites": {"held-0": {"dice": dice, "cases": 9}},
                    "holdout": {"dice": dice, "cases": 9},
                    "intervals": {
                        "level": 0.95,
                        "replicates": 1000,
                        "method": "percentile",
                        "holdout": {"dice": interval},
                    },
                },
            },
        ],
    }
    (path / "results.json").write_text(json.dumps(record), encoding="utf-8")


def test_results_and_report_show_the_baselines_beside_the_federation(tmp_path: Path) -> None:
    configs = _sites(tmp_path / "sites")
    plans = plan_baselines(configs, RunSettings(), tmp_path / "work")
    run = tmp_path / "runs" / "study"
    _results(run, 0.61, [0.55, 0.67])
    results = {}
    for number, plan in enumerate(plans):
        folder = run / "baselines" / f"study-{plan.label}"
        _results(folder, 0.5 + 0.1 * number, [0.4, 0.9])
        results[plan.label] = baseline_result(plan, folder)
    record_baselines(run, results)

    record = RunRecord.from_json((run / "results.json").read_text(), "results.json")
    assert record.baselines is not None and record.baselines.pooled is not None
    assert record.baselines.pooled.holdout == {"dice": 0.5, "cases": 9}
    assert record.baselines.pooled.holdout_intervals == {"dice": [0.4, 0.9]}
    assert record.baselines.pooled.wall_s == 90.0
    assert sorted(record.baselines.local) == ["site-0", "site-1", "site-2"]
    assert record.baselines.local["site-2"].holdout == {"dice": pytest.approx(0.8), "cases": 9}
    assert record.rounds[-1].evaluation is not None  # the federated run is untouched
    assert record.rounds[-1].evaluation.holdout == {"dice": 0.61, "cases": 9}

    table = build_report(run)["baselines"]
    names = [row["name"] for row in table["rows"]]
    assert names[:2] == ["federated", "pooled"] and len(names) == 5
    assert table["rows"][0]["values"]["dice"] == 0.61
    assert table["rows"][0]["intervals"]["dice"] == [0.55, 0.67]
    assert table["rows"][0]["wall_s"] == 90.0
    assert table["rows"][1]["intervals"]["dice"] == [0.4, 0.9]
    page = render_html(build_report(run), {}, run)
    assert 'id="baselines"' in page and "local only: site-1" in page


def test_a_report_without_baselines_has_no_table(tmp_path: Path) -> None:
    run = tmp_path / "study"
    _results(run, 0.61, [0.55, 0.67])
    report = build_report(run)
    assert report["baselines"] is None
    assert 'id="baselines"' not in render_html(report, {}, run)
