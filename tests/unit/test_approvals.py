"""Site approvals: a run is accepted only for an approved (config hash, app hash) pair;
refusals say precisely what differs; the approvals file is never silently reset."""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from consortia.client.node.approve_cli import approvals, approve, revoke
from consortia.common.audit.approvals import APPROVE_COMMAND, ApprovalStore, RunNotApprovedError
from consortia.common.config.settings import RunSettings, load_run_settings, load_site_settings
from consortia.common.errors import ConfigError, ConsortiaError
from consortia.common.wire.run_identity import app_hash, config_hash

RUN_TOML = """\
[run]
name = "lesion-seg"
task = "segmentation"
rounds = 10
min_sites = 3
seed = 0

[run.model]
architecture = "unet"
spatial_dims = 2
channels = [16, 32, 64, 128]
strides = [2, 2, 2]
num_res_units = 0
norm_groups = 8

[run.training]
local_epochs = 2
batch_size = 16
learning_rate = 0.002

[run.privacy]
target_epsilon = 8.0
max_grad_norm = 1.0
"""

SITE_TOML = """\
[site]
name = "hospital-a"
role = "train"

[data]
path = "data/site.npz"
format = "npz"

[node]
superlink = "127.0.0.1:9092"
state_dir = "state"

[privacy]
max_epsilon = 10.0
delta = 1e-5
"""

OTHER_APP = "a" * 64


@pytest.fixture()
def site_config(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "site.npz").write_bytes(b"")  # only its existence is checked here
    path = tmp_path / "site.toml"
    path.write_text(SITE_TOML, encoding="utf-8")
    return path


@pytest.fixture()
def store(site_config: Path) -> ApprovalStore:
    return ApprovalStore.for_site(load_site_settings(site_config))


def _run(tmp_path: Path, name: str = "run.toml", text: str = RUN_TOML) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _settings(tmp_path: Path, text: str = RUN_TOML) -> RunSettings:
    return load_run_settings(_run(tmp_path, "settings.toml", text))


def test_store_lives_in_the_site_state_dir(tmp_path: Path, store: ApprovalStore) -> None:
    assert store.path == tmp_path / "state" / "approvals.json"
    assert store.list() == []


def test_approved_run_passes(tmp_path: Path, store: ApprovalStore) -> None:
    settings = _settings(tmp_path)
    approval = store.approve(settings, by="Dr. Ada", note="IRB 2025-17")
    assert approval.study == "lesion-seg"
    assert approval.config_hash == config_hash(settings)
    assert approval.app_hash == app_hash()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", approval.approved_at)
    # A new store (e.g. after a node restart) reads the same file.
    reopened = ApprovalStore(tmp_path / "state")
    assert reopened.check(config_hash(settings), app_hash()) == approval
    saved = json.loads(store.path.read_text())
    assert saved["approvals"][0]["approved_by"] == "Dr. Ada"
    assert saved["approvals"][0]["note"] == "IRB 2025-17"


def test_other_config_is_refused(tmp_path: Path, store: ApprovalStore) -> None:
    store.approve(_settings(tmp_path), by="ada")
    other = _settings(tmp_path, RUN_TOML.replace("target_epsilon = 8.0", "target_epsilon = 20.0"))
    digest = config_hash(other)
    with pytest.raises(RunNotApprovedError) as err:
        store.check(digest, app_hash())
    message = str(err.value)
    assert message.startswith(f"run config {digest[:12]} is not approved at this site")
    assert APPROVE_COMMAND in message
    assert str(tmp_path) not in message  # nothing about the site's files goes to the server
    assert not err.value.config_approved
    assert isinstance(err.value, ConsortiaError)


def test_changed_app_code_is_refused(tmp_path: Path, store: ApprovalStore) -> None:
    settings = _settings(tmp_path)
    store.approve(settings, by="ada", app=OTHER_APP)
    with pytest.raises(RunNotApprovedError) as err:
        store.check(config_hash(settings), app_hash())
    message = str(err.value)
    assert (
        f"run config {config_hash(settings)[:12]} approved, but app code {app_hash()[:12]} "
        f"differs from the approved {OTHER_APP[:12]} (Consortia upgraded?)"
    ) in message
    assert APPROVE_COMMAND in message
    assert err.value.config_approved
    # Approving the new code too: both versions are accepted.
    store.approve(settings, by="ada")
    store.check(config_hash(settings), app_hash())
    store.check(config_hash(settings), OTHER_APP)
    assert len(store.list()) == 2


def test_approving_twice_keeps_one_entry(tmp_path: Path, store: ApprovalStore) -> None:
    settings = _settings(tmp_path)
    first = store.approve(settings, by="ada", note="first")
    again = store.approve(settings, by="bob", note="second")
    assert again == first
    assert store.list() == [first]
    assert store.find(config_hash(settings), app_hash()) == first
    assert store.find(config_hash(settings), OTHER_APP) is None


def test_revoke(tmp_path: Path, store: ApprovalStore) -> None:
    settings = _settings(tmp_path)
    kept = _settings(tmp_path, RUN_TOML.replace("rounds = 10", "rounds = 3"))
    store.approve(settings, by="ada")
    store.approve(settings, by="ada", app=OTHER_APP)
    store.approve(kept, by="ada")
    digest = config_hash(settings)
    assert store.resolve(digest[:8].upper()) == digest
    removed = store.revoke(digest)
    assert {a.app_hash for a in removed} == {app_hash(), OTHER_APP}
    with pytest.raises(RunNotApprovedError, match="is not approved at this site"):
        store.check(digest, app_hash())
    store.check(config_hash(kept), app_hash())
    with pytest.raises(ConfigError, match="no approval has config hash"):
        store.revoke(digest)
    with pytest.raises(ConfigError, match="no approval has a config hash starting"):
        store.resolve(digest[:8])
    with pytest.raises(ConfigError, match="at least 4 hex digits"):
        store.resolve("ab")


def test_ambiguous_prefix(tmp_path: Path, store: ApprovalStore) -> None:
    base = _settings(tmp_path)
    seen: dict[str, RunSettings] = {}
    seed = 0
    # Two configs whose hashes share their first 4 hex digits (a few hundred tries).
    while True:
        settings = base.model_copy(update={"seed": seed})
        prefix = config_hash(settings)[:4]
        if prefix in seen:
            break
        seen[prefix] = settings
        seed += 1
    store.approve(seen[prefix], by="ada")
    store.approve(settings, by="ada")
    with pytest.raises(ConfigError, match=f"prefix '{prefix}' is ambiguous"):
        store.resolve(prefix)
    assert store.resolve(config_hash(settings)[:20]) == config_hash(settings)


def test_corrupt_file_is_an_error_and_is_kept(tmp_path: Path, store: ApprovalStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text('{"format": "consortia-approvals", "version": 1, "appro')
    with pytest.raises(ConfigError, match=re.escape(str(store.path))):
        store.check("0" * 64, app_hash())
    with pytest.raises(ConfigError, match="not valid JSON"):
        store.approve(_settings(tmp_path), by="ada")
    assert store.path.read_text().endswith('"appro')  # never reset


def test_invalid_entry_names_file_and_field(tmp_path: Path, store: ApprovalStore) -> None:
    store.approve(_settings(tmp_path), by="ada")
    data = json.loads(store.path.read_text())
    data["approvals"][0]["config_hash"] = "not-a-hash"
    store.path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        store.list()
    assert str(store.path) in str(err.value)
    assert "approvals.0.config_hash" in str(err.value)


def test_empty_approver_is_refused(tmp_path: Path, store: ApprovalStore) -> None:
    with pytest.raises(ConfigError, match="approved by"):
        store.approve(_settings(tmp_path), by="  ")
    assert not store.path.exists()


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("approve")(approve)
    app.command("approvals")(approvals)
    app.command("revoke")(revoke)
    return app


runner = CliRunner(env={"COLUMNS": "200"})


def test_cli_approve_list_revoke(tmp_path: Path, site_config: Path, store: ApprovalStore) -> None:
    app = _cli()
    run_config = _run(tmp_path)
    digest = config_hash(load_run_settings(run_config))

    result = runner.invoke(app, ["approvals", "--site-config", str(site_config)])
    assert result.exit_code == 0, result.output
    assert "No approved runs" in result.output

    args = ["approve", str(run_config), "--site-config", str(site_config)]
    result = runner.invoke(app, [*args, "--by", "Dr. Ada [IT]", "--note", "IRB 17"])
    assert result.exit_code == 0, result.output
    assert "Approved study lesion-seg" in result.output
    assert digest in result.output
    assert app_hash() in result.output
    assert str(store.path) in result.output
    store.check(digest, app_hash())

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "already approved" in result.output
    assert "Dr. Ada [IT]" in result.output
    assert len(store.list()) == 1

    result = runner.invoke(app, ["approvals", "--site-config", str(site_config)])
    assert result.exit_code == 0, result.output
    assert "lesion-seg" in result.output
    assert digest[:12] in result.output
    assert "Dr. Ada [IT]" in result.output
    assert "IRB 17" in result.output

    result = runner.invoke(app, ["revoke", digest[:6], "--site-config", str(site_config)])
    assert result.exit_code == 0, result.output
    assert f"Revoked 1 approval(s) of study lesion-seg (config {digest[:12]})" in result.output
    assert store.list() == []


def test_cli_default_approver_is_the_os_user(
    tmp_path: Path, site_config: Path, store: ApprovalStore
) -> None:
    args = ["approve", str(_run(tmp_path)), "--site-config", str(site_config)]
    result = runner.invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert store.list()[0].approved_by == getpass.getuser()


def test_cli_errors(tmp_path: Path, site_config: Path) -> None:
    app = _cli()
    result = runner.invoke(app, ["approve", str(_run(tmp_path))])
    assert result.exit_code == 2  # --site-config is required
    missing = tmp_path / "missing.toml"
    result = runner.invoke(app, ["approve", str(missing), "--site-config", str(site_config)])
    assert isinstance(result.exception, ConfigError)
    assert str(missing) in str(result.exception)
    result = runner.invoke(app, ["revoke", "abcd", "--site-config", str(site_config)])
    assert isinstance(result.exception, ConfigError)
    assert "no approval has a config hash starting 'abcd'" in str(result.exception)
