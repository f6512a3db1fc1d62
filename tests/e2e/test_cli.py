"""The deployment path as separate commands: `consortia server start`, one
`consortia node start` per site and `consortia run`, all real processes on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from consortia.common.audit.check import read_audit_log
from consortia.server.report.data import build_report
from tests.support.builders import run_toml
from tests.support.cli import consortia, output_of
from tests.support.cli_federation import CliFederation
from tests.support.federation import SiteSpec, add_sites

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_server_nodes_and_run_commands(tmp_path: Path, federation: CliFederation) -> None:
    federation.start_server()
    sites = [
        # [node] device reaches training (issue 20)
        SiteSpec("north", privacy=None, node={"device": "cpu"}),
        SiteSpec("south", privacy=None),
        # the held-out site shares two saliency maps of the final model
        SiteSpec(
            "east",
            role="holdout",
            privacy=None,
            tables={"saliency": {"images": 2, "share": True}},
        ),
    ]
    add_sites(federation, sites)
    results = federation.run(
        "cli-test",
        run_toml(
            "cli-test",
            training={"batch_size": 8},
            tables={"report": {"tensorboard": True}},
        ),
    )
    assert results["dir"].name.startswith("cli-test-")
    assert results["status"] == "completed"
    assert {s["name"]: s["role"] for s in results["sites"]} == {
        "north": "train",
        "south": "train",
        "east": "holdout",
    }
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    assert results["rounds"][2]["evaluation"]["holdout"]["cases"] == 24
    # every metric of every model version, logged live for TensorBoard
    events = EventAccumulator(str(results["dir"] / "tensorboard"))
    events.Reload()
    holdout_dice = events.Scalars("eval/holdout/dice")
    assert [event.step for event in holdout_dice] == [0, 1, 2]
    final_dice = results["rounds"][2]["evaluation"]["holdout"]["dice"]
    assert holdout_dice[-1].value == pytest.approx(final_dice, abs=1e-6)
    assert [event.step for event in events.Scalars("train/north/examples")] == [1, 2]
    # under DP (the default) no site sends its raw training loss (issue 19, F3)
    assert "train/north/loss" not in events.Tags()["scalars"]
    # the saliency maps: kept at the site, and in the run folder because it shares them
    kept = sorted((tmp_path / "east" / "state" / "saliency" / results["dir"].name).iterdir())
    shared = sorted((results["dir"] / "saliency" / "east").iterdir())
    assert [p.name for p in shared] == [p.name for p in kept] == ["case-00.png", "case-01.png"]
    assert [p.read_bytes() for p in shared] == [p.read_bytes() for p in kept]
    assert len(build_report(results["dir"])["saliency"]) == 2
    # the device: logged when the node started and in every round's audit record
    north_log = read_audit_log(tmp_path / "north" / "state" / "audit.jsonl")
    assert [r["device"] for r in north_log if r["event"] == "node_started"] == ["cpu"]
    sent = [r for r in north_log if r["event"] in ("update_sent", "evaluation_sent")]
    assert sent and all(r["device"] == "cpu" for r in sent)
    # the nodes kept their Flower state and logs where the site config said
    assert (tmp_path / "north" / "state" / "logs" / "supernode.log").is_file()


def test_cli_reports_config_errors_by_field(tmp_path: Path) -> None:
    bad = tmp_path / "run.toml"
    bad.write_text("[run]\nrounds = 2\nlocal_epochs = 3\n", encoding="utf-8")
    result = consortia("run", bad)
    assert result.returncode == 2
    assert "run.toml [run]: local_epochs: unknown key" in output_of(result)

    missing = consortia("node", "start", "--site-config", tmp_path / "x.toml")
    assert missing.returncode == 2
    assert "config file not found" in output_of(missing)
