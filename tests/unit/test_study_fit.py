"""A study that breaks the site's privacy policy or does not fit its data set is refused,
with the reason, by `node approve` and by the node's approval check; `node check` finds
a wrong CA, a key the study's roster does not register and an unreadable case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from consortia.client.node.approve_cli import approve
from consortia.client.node.ops_cli import node_check
from consortia.client.node.study_fit import study_refusals
from consortia.common.config.roster import site_fingerprint
from consortia.common.config.settings import load_run_settings, load_site_settings
from consortia.common.crypto.site_keys import create_site_key
from tests.support.builders import TomlValue, run_toml, site_toml
from tests.support.dicom_factory import write_series

MANIFEST = """
[dataset]
name = "ct"
task = "segmentation"
labels = { 0 = "background", 1 = "liver", 2 = "lesion" }
[preprocess]
spatial_size = [16, 16, 16]
[split]
rule = "patient-hash"
[[case]]
id = "one"
image = { dicom = "one" }
label = { seg = "missing-seg.dcm" }
"""
MODEL: dict[str, TomlValue] = {
    "architecture": "unet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
}
MODEL |= {"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm_groups": 2}
POLICY: dict[str, TomlValue] = {"max_epsilon": 10.0, "max_grad_norm": 10.0}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    write_series(tmp_path / "one", n_slices=2, rows=6, columns=5)
    (tmp_path / "manifest.toml").write_text(MANIFEST)
    path = tmp_path / "site.toml"
    node: dict[str, TomlValue] = {
        "insecure": True,
        "state_dir": str(tmp_path / "state"),
        "superlink": "127.0.0.1:1",
    }
    path.write_text(site_toml("site-a", data="manifest.toml", node=node, privacy=POLICY))
    return path


def _run(tmp_path: Path, name: str, **changes: Any) -> Path:
    model = MODEL | changes.pop("model", {})
    privacy = {"target_epsilon": 5.0} | changes.pop("privacy", {})
    path = tmp_path / f"{name}.toml"
    path.write_text(run_toml(name, model=model, privacy=privacy, **changes))
    return path


CASES: dict[str, tuple[dict[str, Any], str]] = {
    "dp-off": ({"privacy": {"enabled": False}}, "non-private training"),
    "clip": ({"privacy": {"max_grad_norm": 50.0}}, "max_grad_norm = 50"),
    "epsilon": ({"privacy": {"target_epsilon": 50.0}}, "target_epsilon = 50"),
    "task": ({"task": "classification"}, "the study is classification"),
    "dims": ({"model": {"spatial_dims": 2}}, "the model is 2D"),
    "channels": ({"model": {"in_channels": 3}}, "takes 3 channel(s)"),
    "labels": ({"model": {"out_channels": 2}}, "labels up to 2"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_mismatch_is_refused_with_its_reason(tmp_path: Path, site: Path, name: str) -> None:
    changes, reason = CASES[name]
    run = _run(tmp_path, name, **changes)
    reasons = study_refusals(load_run_settings(run), load_site_settings(site), name_files=False)
    assert len(reasons) == 1 and reason in reasons[0], reasons
    assert str(tmp_path) not in reasons[0]  # what the node sends names no file


def test_remaining_budget_is_checked_at_approval(tmp_path: Path, site: Path) -> None:
    run = load_run_settings(_run(tmp_path, "ok"))
    assert study_refusals(run, load_site_settings(site), spent=4.0) == []
    reasons = study_refusals(run, load_site_settings(site), spent=6.0)
    assert "budget left on this data set: 4.000" in reasons[0]


def test_approve_shows_the_summary_then_refuses(tmp_path: Path, site: Path) -> None:
    app = typer.Typer()
    app.command("approve")(approve)
    app.command("other")(approve)
    run = _run(tmp_path, "wide", model={"spatial_dims": 2})
    result = CliRunner().invoke(app, ["approve", str(run), "--site-config", str(site)])
    assert result.exit_code != 0
    assert "DP-SGD" in result.output and "roster" in result.output
    assert "model is 2D" in str(result.exception)
    assert not (tmp_path / "state" / "approvals.json").exists()


def test_node_check_finds_wrong_ca_unregistered_key_and_unreadable_case(
    tmp_path: Path, site: Path
) -> None:
    create_site_key(tmp_path / "keys", "site-a")
    create_site_key(tmp_path / "other", "site-b")
    (tmp_path / "not-a-ca.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
    node: dict[str, TomlValue] = {
        "root_certificates": str(tmp_path / "not-a-ca.pem"),
        "key": str(tmp_path / "keys" / "site-a.key"),
        "state_dir": str(tmp_path / "state"),
        "superlink": "127.0.0.1:1",
        "device": "cpu",
    }
    site.write_text(site_toml("site-a", data="manifest.toml", node=node, privacy=POLICY))
    other = tmp_path / "other" / "site-b.key"
    roster = [{"name": "site-a", "fingerprint": str(site_fingerprint(other))}]
    run = _run(tmp_path, "rostered", sites=roster, min_sites=1)
    app = typer.Typer()
    app.command("check")(node_check)
    app.command("other")(node_check)
    args = ["check", "--site-config", str(site), "--run", str(run)]
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, args)
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 1, text
    assert "key not registered for study rostered" in text
    assert "consortium CA PROBLEM" in text
    assert "server PROBLEM server unreachable" in text
    assert "0 of 1 case(s) read" in text  # the label file is missing
    assert "device OK cpu" in text
