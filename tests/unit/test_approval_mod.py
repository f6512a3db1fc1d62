"""The approval mod with real site files, approvals and Flower messages: an approved run
reaches the handler; an unapproved one, a query for another data set, an instruction
that differs from the approved run, and a plain update after a secure session are
refused with error 4105. FedProx's proximal_mu is one of the checked instructions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from consortia.client.mods.approval import approval_mod
from consortia.common.audit.approvals import ApprovalStore
from consortia.common.config.settings import Role, RosterEntry, RunSettings, load_site_settings
from consortia.common.config.strategy_settings import StrategySettings
from consortia.common.crypto.site_keys import (
    create_site_key,
    load_site_private_key,
    public_key_fingerprint,
)
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.run_identity import app_hash

SETTINGS = RunSettings(name="study")


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = 9
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


def _context(site: Path, settings: RunSettings = SETTINGS) -> Context:
    return Context(
        run_id=9,
        node_id=3,
        node_config={rk.NODE_CONFIG_SITE_CONFIG: str(site)},
        state=RecordDict(),
        run_config={rk.RUN_CONFIG_SETTINGS: settings.to_json()},
    )


def _handled(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"handled": ConfigRecord({"ok": True})}), reply_to=msg)


def _query(dataset: str = "") -> Message:
    config = ConfigRecord(
        {rk.CFG_TASK: SETTINGS.task.value, rk.CFG_DATASET: dataset, rk.CFG_APP_HASH: app_hash()}
    )
    return Message(RecordDict({rk.CONFIG_KEY: config}), dst_node_id=3, message_type="query")


def _train(**changes: object) -> Message:
    fields: dict[str, object] = {
        "round": 1,
        "run_name": SETTINGS.name,
        "task": SETTINGS.task,
        "model": SETTINGS.model.to_model_settings(),
        "layout_fingerprint": "x",
        "batch_size": SETTINGS.training.batch_size,
        "surface_metrics": False,
        "local_epochs": SETTINGS.training.local_epochs,
        "learning_rate": SETTINGS.training.learning_rate,
        "seed": SETTINGS.seed,
        "total_rounds": SETTINGS.rounds,
        "privacy": SETTINGS.privacy,
        "app_hash": app_hash(),
    } | changes
    instruction = Instruction(**fields)  # type: ignore[arg-type]
    content = RecordDict({rk.CONFIG_KEY: instruction.to_config()})
    return Message(content, dst_node_id=3, message_type="train", group_id="1")


def _approve(site: Path, settings: RunSettings = SETTINGS) -> None:
    ApprovalStore.for_site(load_site_settings(site)).approve(settings, by="test")


def test_unapproved_run_is_refused_and_approved_run_handled(site: Path) -> None:
    reply = approval_mod(_query(), _context(site), _handled)
    assert reply.has_error() and reply.error.code == rk.ERROR_NOT_APPROVED
    assert "not approved at this site" in str(reply.error.reason)
    _approve(site)
    assert not approval_mod(_query(), _context(site), _handled).has_error()
    assert not approval_mod(_train(), _context(site), _handled).has_error()


def test_query_for_another_data_set_is_refused(site: Path) -> None:
    _approve(site)
    reply = approval_mod(_query(dataset="other"), _context(site), _handled)
    assert reply.has_error() and "another dataset" in str(reply.error.reason)


def test_instructions_that_differ_from_the_approved_run_are_refused(site: Path) -> None:
    _approve(site)
    reply = approval_mod(_train(learning_rate=0.5, batch_size=3), _context(site), _handled)
    assert reply.has_error()
    assert "batch_size, learning_rate" in str(reply.error.reason)


def test_no_plain_update_after_a_secure_session(site: Path) -> None:
    _approve(site)
    context = _context(site)
    context.state[rk.SECAGG_STATE_KEY] = ConfigRecord({"stage": "started"})
    reply = approval_mod(_train(secure=False), context, _handled)
    assert reply.has_error() and "no downgrade" in str(reply.error.reason)
    assert not approval_mod(_train(secure=True, weight_norm=10.0), context, _handled).has_error()


def test_a_proximal_mu_other_than_the_approved_one_is_refused(site: Path) -> None:
    _approve(site)  # FedAvg: mu 0
    reply = approval_mod(_train(proximal_mu=0.5), _context(site), _handled)
    assert reply.has_error() and reply.error.code == rk.ERROR_NOT_APPROVED
    assert "differ from the approved run: proximal_mu" in str(reply.error.reason)
    fedprox = RunSettings(name="study", strategy=StrategySettings(name="fedprox", proximal_mu=0.1))
    _approve(site, fedprox)
    context = _context(site, fedprox)
    assert not approval_mod(_train(proximal_mu=0.1), context, _handled).has_error()
    for mu in (0.0, 0.2):
        reply = approval_mod(_train(proximal_mu=mu), context, _handled)
        assert reply.has_error() and "proximal_mu" in str(reply.error.reason)


def _keyed_site(tmp_path: Path, name: str = "a", role: str = "train") -> tuple[Path, str]:
    """A site with a real key pair; returns its config and its key's fingerprint."""
    files = create_site_key(tmp_path / "keys", name)
    np.savez(tmp_path / "data.npz", x=np.zeros(1))
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[site]\nname = "{name}"\nrole = "{role}"\n[data]\npath = "data.npz"\n'
        f'[node]\ninsecure = true\nstate_dir = "state"\nkey = "{files.private_key}"\n',
        encoding="utf-8",
    )
    return config, public_key_fingerprint(load_site_private_key(files.private_key))


def _with_roster(*entries: tuple[str, str, str]) -> RunSettings:
    return RunSettings(
        name="study",
        min_sites=1,
        sites=tuple(RosterEntry(name=n, fingerprint=f, role=Role(r)) for n, f, r in entries),
    )


def test_a_site_refuses_a_roster_that_does_not_list_it_with_its_own_key(tmp_path: Path) -> None:
    """The roster is approved with the run; a server cannot swap a site's key or role,
    nor run it in a study whose roster leaves it out (Sybil and roster attacks, F2)."""
    config, fingerprint = _keyed_site(tmp_path)
    _, other = _keyed_site(tmp_path / "other", "a")
    cases = {
        "does not list this site": _with_roster(("b", fingerprint, "train")),
        "not this site's key": _with_roster(("a", other, "train")),
        "lists a as holdout": _with_roster(("a", fingerprint, "holdout")),
    }
    for reason, settings in cases.items():
        _approve(config, settings)  # approved, and still refused: the roster is wrong
        reply = approval_mod(_query(), _context(config, settings), _handled)
        assert reply.has_error() and reply.error.code == rk.ERROR_NOT_APPROVED, reason
        assert reason in str(reply.error.reason)
    listed = _with_roster(("a", fingerprint, "train"), ("b", other, "train"))
    _approve(config, listed)
    assert not approval_mod(_query(), _context(config, listed), _handled).has_error()
