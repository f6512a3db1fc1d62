"""The approved warm start (`[run.model.init]`, issue 18): its settings and config hash, the
checks on the file (missing, altered, another architecture, not a state dict, a MONAI
bundle), the server's round 0 (over the in-process Grid), the site's round-1 check through
its real ClientApp, and `consortia model pretrain | hash` on a small npz data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from typer.testing import CliRunner

from consortia.client.client_app import app as client_app
from consortia.client.release_cache import model_sha256
from consortia.client.training.pretrain_cli import model_app
from consortia.common.audit.approvals import ApprovalStore
from consortia.common.audit.check import read_audit_log
from consortia.common.config.settings import (
    RunSettings,
    load_run_settings,
    load_site_settings,
    run_settings_from_json,
)
from consortia.common.demo.data import DemoDataSettings, write_site_npz
from consortia.common.errors import ConfigError
from consortia.common.networks.models import build_model
from consortia.common.networks.warm_start import (
    BUNDLE_WEIGHTS,
    WARM_START,
    WarmStartError,
    WarmStartMismatchError,
    check_round_start,
    load_warm_start,
    save_weights,
    weights_sha256,
)
from consortia.common.networks.weights import WeightLayout
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.record_fields import RecordFieldError
from consortia.common.wire.run_identity import RunIdentity, app_hash, config_hash
from consortia.server.exchange.reply_verifier import ReplyVerifier
from consortia.server.registry.site_registry import SiteRegistry
from consortia.server.run.federation import Federation
from consortia.server.run.folder import RunFolder
from tests.support.fake_grid import RUN_ID, FakeGrid, make_sites

TINY = {"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm_groups": 2}
OTHER = {"channels": [8, 16], "strides": [2], "num_res_units": 0, "norm_groups": 2}
RUN_TOML = """[run]
name = "warm"
rounds = 1
[run.model]
channels = [4, 8]
strides = [2]
num_res_units = 0
norm_groups = 2
[run.privacy]
enabled = false
"""


def _checkpoint(path: Path, model: dict[str, Any] = TINY, seed: int = 7) -> str:
    """A trained-elsewhere model of `model`'s architecture; returns its weights' SHA-256."""
    torch.manual_seed(seed)
    settings = RunSettings.model_validate({"model": model}).model.to_model_settings()
    digest, _ = save_weights(build_model(settings), path)
    return digest


def _run_config(folder: Path, init: str, name: str = "run.toml") -> Path:
    path = folder / name
    path.write_text(RUN_TOML + init, encoding="utf-8")
    return path


def _warm(tmp_path: Path) -> tuple[Path, str]:
    digest = _checkpoint(tmp_path / "init.pt")
    init = f'[run.model.init]\npath = "init.pt"\nsha256 = "{digest}"\n'
    return _run_config(tmp_path, init), digest


# ---- settings -------------------------------------------------------------------------------


def test_init_is_part_of_the_approved_config_and_its_folder_is_not(tmp_path: Path) -> None:
    config, digest = _warm(tmp_path)
    settings = load_run_settings(config)
    assert settings.model.init is not None and settings.model.init.sha256 == digest
    assert settings.init_file() == tmp_path / "init.pt"
    # the Flower run config carries the run config's folder, outside the hashed settings
    again = run_settings_from_json(settings.to_json())
    assert again == settings and again.init_file() == tmp_path / "init.pt"
    assert config_hash(again) == config_hash(settings)
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    moved = load_run_settings(_run_config(copy, config.read_text().removeprefix(RUN_TOML)))
    assert config_hash(moved) == config_hash(settings)  # a site's copy in another folder
    other = "0" * 64
    changed = load_run_settings(
        _run_config(tmp_path, f'[run.model.init]\npath = "init.pt"\nsha256 = "{other}"\n', "b")
    )
    assert config_hash(changed) != config_hash(settings)
    # the model the factory builds is the same with or without a warm start
    assert (
        settings.model.to_model_settings()
        == load_run_settings(_run_config(tmp_path, "", "plain.toml")).model.to_model_settings()
    )


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ('path = "init.pt"\nsha256 = "ABC"\n', "model.init.sha256: must be the 64 lowercase hex"),
        ('path = "init.pt"\n', "model.init.sha256: "),
        ('sha256 = "' + "a" * 64 + '"\npath = "x"\nformat = "pt"\n', "model.init.format"),
    ],
)
def test_a_bad_init_table_names_the_field(tmp_path: Path, init: str, message: str) -> None:
    config = _run_config(tmp_path, "[run.model.init]\n" + init)
    with pytest.raises(ConfigError, match=message):
        load_run_settings(config)


# ---- the file -------------------------------------------------------------------------------


def test_a_matching_checkpoint_loads_as_the_initial_weights(tmp_path: Path) -> None:
    config, digest = _warm(tmp_path)
    warm = load_warm_start(load_run_settings(config))
    state = torch.load(tmp_path / "init.pt", weights_only=True)
    np.testing.assert_array_equal(warm.weights, WeightLayout.of(state).flatten(state))
    assert warm.sha256 == digest == model_sha256(warm.weights)  # the site's own hash
    assert warm.to_record()["path"] == "init.pt" and len(warm.file_sha256) == 64


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    config, _ = _warm(tmp_path)
    (tmp_path / "init.pt").unlink()
    with pytest.raises(WarmStartError, match=r"model.init: .*init.pt: file not found"):
        load_warm_start(load_run_settings(config))


def test_an_altered_file_is_refused(tmp_path: Path) -> None:
    config, digest = _warm(tmp_path)
    state = torch.load(tmp_path / "init.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1e-3
    torch.save(state, tmp_path / "init.pt")
    with pytest.raises(WarmStartError) as refused:
        load_warm_start(load_run_settings(config))
    assert f"the approved run config says {digest} (the file was altered or replaced)" in str(
        refused.value
    )


def test_another_architecture_is_refused(tmp_path: Path) -> None:
    config, _ = _warm(tmp_path)
    _checkpoint(tmp_path / "init.pt", OTHER)
    with pytest.raises(WarmStartError, match=r"another architecture than \[run.model\] builds"):
        load_warm_start(load_run_settings(config))
    state = torch.load(tmp_path / "init.pt", weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "init.pt")
    with pytest.raises(WarmStartError, match=r"unexpected 1: extra\.weight"):
        load_warm_start(load_run_settings(config))


def test_not_a_state_dict_or_code_in_a_pickle_is_refused(tmp_path: Path) -> None:
    config, _ = _warm(tmp_path)
    torch.save([1, 2, 3], tmp_path / "init.pt")
    with pytest.raises(WarmStartError, match="not a state dict of named tensors"):
        load_warm_start(load_run_settings(config))
    torch.save({"weights": WarmStartError("x")}, tmp_path / "init.pt")  # any class: refused
    with pytest.raises(WarmStartError, match="not a readable weights file"):
        load_warm_start(load_run_settings(config))


def test_a_monai_bundle_folder_is_read_from_models_model_pt(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    digest = _checkpoint(bundle / BUNDLE_WEIGHTS)
    init = f'[run.model.init]\npath = "bundle"\nsha256 = "{digest}"\n'
    warm = load_warm_start(load_run_settings(_run_config(tmp_path, init)))
    assert warm.sha256 == digest
    (bundle / BUNDLE_WEIGHTS).unlink()
    with pytest.raises(WarmStartError, match="not a MONAI bundle"):
        load_warm_start(load_run_settings(_run_config(tmp_path, init)))


def test_a_relative_path_without_the_run_config_folder_is_an_error(tmp_path: Path) -> None:
    settings = RunSettings.model_validate(
        {"model": {**TINY, "init": {"path": "init.pt", "sha256": "a" * 64}}}
    )
    with pytest.raises(ConfigError, match="is relative and the run config's folder"):
        load_warm_start(settings)


# ---- the server's round 0 -------------------------------------------------------------------


def _federation(tmp_path: Path, init_path: Path, digest: str) -> Federation:
    registry = SiteRegistry(tmp_path / "registry")
    sites = make_sites(tmp_path, ("a", "b"), registry)
    settings = RunSettings.model_validate(
        {
            "name": "warm",
            "rounds": 1,
            "model": {**TINY, "init": {"path": str(init_path), "sha256": digest}},
            "privacy": {"enabled": False},
            "secure_aggregation": {"mode": "off"},
            "round_timeout_s": 1.0,
            "straggler_timeout_s": 0.2,
            "connect_timeout_s": 2.0,
        }
    )
    config = RunIdentity.of(settings).config_hash
    folder = RunFolder(tmp_path / "runs" / "warm", {"run_name": "warm", "config_hash": config})
    verifier = ReplyVerifier(registry, RUN_ID)
    return Federation(FakeGrid(sites), settings, folder, verifier=verifier, poll_interval_s=0.001)


@pytest.mark.usefixtures("server_task_identity")
def test_the_server_starts_from_the_checked_warm_start(tmp_path: Path) -> None:
    digest = _checkpoint(tmp_path / "init.pt")
    federation = _federation(tmp_path, tmp_path / "init.pt", digest)
    federation.run()
    saved = torch.load(federation.folder.path / "checkpoints/round-000.pt", weights_only=True)
    assert weights_sha256(federation.layout.flatten(saved)) == digest
    [event] = [e for e in read_audit_log(federation.folder.audit.path) if e["event"] == WARM_START]
    assert event["sha256"] == digest


@pytest.mark.usefixtures("server_task_identity")
def test_the_server_refuses_an_altered_warm_start_before_asking_any_site(tmp_path: Path) -> None:
    digest = _checkpoint(tmp_path / "init.pt")
    _checkpoint(tmp_path / "init.pt", seed=8)  # replaced after approval
    federation = _federation(tmp_path, tmp_path / "init.pt", digest)
    with pytest.raises(WarmStartError, match="altered or replaced"):
        federation.run()
    assert federation.folder.record.rounds == []


# ---- the site's round-1 check ---------------------------------------------------------------


def test_check_round_start_compares_round_one_only() -> None:
    weights = np.arange(10, dtype=np.float32)
    settings = RunSettings.model_validate(
        {"model": {**TINY, "init": {"path": "/x.pt", "sha256": model_sha256(weights)}}}
    )
    check_round_start(settings, 1, weights)
    check_round_start(settings, 2, weights + 1)  # later rounds move on from it
    with pytest.raises(WarmStartMismatchError, match="not to the approved warm start"):
        check_round_start(settings, 1, weights + 1)
    assert issubclass(WarmStartMismatchError, RecordFieldError)  # refused as malformed


@pytest.mark.usefixtures("server_task_identity")
def test_a_site_refuses_a_round_one_model_other_than_the_approved_one(tmp_path: Path) -> None:
    write_site_npz(tmp_path / "data.npz", 0, DemoDataSettings(image_size=32, train_cases=8))
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "north"\n[data]\npath = "data.npz"\n'
        '[node]\ninsecure = true\nstate_dir = "state"\n[privacy]\nallow_non_private = true\n',
        encoding="utf-8",
    )
    torch.manual_seed(1)
    model = build_model(RunSettings.model_validate({"model": TINY}).model.to_model_settings())
    layout = WeightLayout.of(model.state_dict())
    approved = layout.flatten(model.state_dict())
    settings = RunSettings.model_validate(
        {
            "name": "warm",
            "rounds": 2,
            "model": {**TINY, "init": {"path": "/init.pt", "sha256": model_sha256(approved)}},
            "privacy": {"enabled": False},
            "training": {"batch_size": 4},
        }
    )
    ApprovalStore.for_site(load_site_settings(tmp_path / "site.toml")).approve(settings, by="t")
    context = Context(
        run_id=31,
        node_id=1,
        node_config={rk.NODE_CONFIG_SITE_CONFIG: str(tmp_path / "site.toml")},
        state=RecordDict(),
        run_config={rk.RUN_CONFIG_SETTINGS: settings.to_json()},
    )

    def train(round_number: int, weights: np.ndarray) -> Message:
        instruction = Instruction(
            round=round_number,
            run_name="warm",
            task=settings.task,
            model=settings.model.to_model_settings(),
            layout_fingerprint=layout.fingerprint(),
            batch_size=4,
            surface_metrics=False,
            local_epochs=1,
            learning_rate=settings.training.learning_rate,
            seed=0,
            run_id="run-a",
            total_rounds=2,
            privacy=settings.privacy,
            dataset="",
            app_hash=app_hash(),
        )
        content = RecordDict(
            {
                rk.CONFIG_KEY: instruction.to_config(),
                rk.ARRAYS_KEY: ArrayRecord({rk.WEIGHTS_ARRAY: Array(weights)}),
            }
        )
        msg = Message(content, dst_node_id=1, message_type="train", group_id=str(round_number))
        return client_app(msg, context)

    refused = train(1, approved + 0.01)
    assert refused.has_error() and refused.error.code == rk.ERROR_BAD_MESSAGE
    assert "not to the approved warm start" in str(refused.error.reason)
    assert not train(1, approved).has_error()
    assert not train(2, approved + 0.01).has_error()  # round 2 starts from the aggregate


# ---- consortia model pretrain | hash ---------------------------------------------------------


def test_pretrain_writes_a_checkpoint_the_run_config_approves(tmp_path: Path) -> None:
    data = tmp_path / "public.npz"
    write_site_npz(data, 0, DemoDataSettings(image_size=32, train_cases=8, test_cases=4))
    run = _run_config(tmp_path, "")
    out, warm_config = tmp_path / "out" / "init.pt", tmp_path / "warm.toml"
    args = ["pretrain", str(run), "--data", str(data), "--out", str(out), "--epochs", "1"]
    args += ["--device", "cpu", "--evaluate", str(data), "--write-run-config", str(warm_config)]
    result = CliRunner().invoke(model_app, args)
    assert result.exit_code == 0, result.output
    settings = load_run_settings(warm_config)
    assert settings.model.init is not None and settings.model.init.path == "out/init.pt"
    warm = load_warm_start(settings)  # the written config approves the written file
    assert warm.sha256 in result.output and "dice" in result.output
    hashed = CliRunner().invoke(model_app, ["hash", str(run), str(out)])
    assert hashed.exit_code == 0 and warm.sha256 in hashed.output
    assert (tmp_path / "out" / "init.pt.json").is_file()


def test_node_approve_checks_the_warm_start_and_shows_its_hash(tmp_path: Path) -> None:
    import typer

    from consortia.client.node.approve_cli import approve

    cli = typer.Typer()
    cli.command()(approve)
    write_site_npz(tmp_path / "data.npz", 0, DemoDataSettings(image_size=32, train_cases=8))
    site = tmp_path / "site.toml"
    site.write_text(
        '[site]\nname = "north"\n[data]\npath = "data.npz"\n'
        '[node]\ninsecure = true\nstate_dir = "state"\n[privacy]\nallow_non_private = true\n',
        encoding="utf-8",
    )
    config, digest = _warm(tmp_path)
    approved = CliRunner().invoke(cli, [str(config), "--site-config", str(site)])
    assert approved.exit_code == 0, approved.output
    assert f"warm start:  {digest} (init.pt, checked)" in approved.output
    _checkpoint(tmp_path / "init.pt", seed=9)  # replaced after the coordinator sent it: refused
    refused = CliRunner().invoke(cli, [str(config), "--site-config", str(site)])
    assert refused.exit_code != 0 and isinstance(refused.exception, WarmStartError)
    assert "altered or replaced" in str(refused.exception)
