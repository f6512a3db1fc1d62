"""The round loop (`server/run/federation.py`) over an in-process Grid (tests/support/
fake_grid.py): real messages, real signatures checked against a real site registry, the
real SecAgg+ session code on both sides, a real run folder and audit log. No processes.

Covered: a plain run's FedAvg; a site that drops out mid-round; a site that refuses (an
error reply, and a privacy-budget refusal that ends its training); too few trainers (the
run ends early, or stops for want of a quorum); a secure round that fails after the sites
masked; and resume from checkpoints/state.json after a run stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, MessageType

from consortia.common.audit.check import read_audit_log
from consortia.common.audit.log import RUN_RESUMED, SITE_LEFT_OUT
from consortia.common.config.settings import RunSettings
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import message_round
from consortia.common.wire.run_identity import RunIdentity
from consortia.server.exchange.reply_verifier import ReplyVerifier
from consortia.server.registry.site_registry import SiteRegistry
from consortia.server.run.federation import Federation
from consortia.server.run.folder import RunFolder
from consortia.server.run.state import STATE_FILE, RunState
from tests.support.fake_grid import (
    DEFAULT,
    DROP,
    RUN_ID,
    STEP,
    FakeGrid,
    FakeSite,
    error_reply,
    make_sites,
)

pytestmark = pytest.mark.usefixtures("server_task_identity")

# A UNet small enough that a round takes milliseconds (a few thousand weights).
TINY_MODEL = {"channels": (4, 8), "strides": (2,), "num_res_units": 0, "norm_groups": 2}
FAST = {"round_timeout_s": 1.0, "straggler_timeout_s": 0.2, "connect_timeout_s": 2.0}


@dataclass
class World:
    """One study: its sites, the fake grid, the registry and the run's settings."""

    root: Path
    sites: dict[int, FakeSite]
    grid: FakeGrid
    registry: SiteRegistry
    settings: RunSettings

    def site(self, name: str) -> FakeSite:
        [site] = [s for s in self.sites.values() if s.name == name]
        return site

    def federation(self, folder: RunFolder, resume_from: RunState | None = None) -> Federation:
        return Federation(
            self.grid,
            self.settings,
            folder,
            verifier=ReplyVerifier(self.registry, RUN_ID),
            poll_interval_s=0.001,
            resume_from=resume_from,
        )

    def new_folder(self, name: str = "study") -> RunFolder:
        return RunFolder(
            self.root / "runs" / name,
            {"run_name": name, "config_hash": RunIdentity.of(self.settings).config_hash},
        )

    def run(self, name: str = "study") -> tuple[Federation, np.ndarray]:
        federation = self.federation(self.new_folder(name))
        return federation, federation.run()


def _world(root: Path, names: tuple[str, ...] = ("a", "b", "c"), **settings: Any) -> World:
    registry = SiteRegistry(root / "registry")
    sites = make_sites(root, names, registry)
    options: dict[str, Any] = {"name": "study", "rounds": 2, "model": TINY_MODEL, **FAST}
    options["privacy"] = {"enabled": False}  # sample-level DP: tests of its own
    options["secure_aggregation"] = {"mode": "off", "stage_timeout_s": 1.0}
    options.update(settings)
    return World(root, sites, FakeGrid(sites), registry, RunSettings.model_validate(options))


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    yield _world(tmp_path)


def _when(kind: str, round_number: int, then: Callable[[Message], Message | str]) -> Any:
    """An answer: `then` for `kind` messages of `round_number`, the usual reply otherwise."""

    def answer(request: Message) -> Message | str:
        if request.metadata.message_type == kind and message_round(request) == round_number:
            return then(request)
        return DEFAULT

    return answer


def _events(federation: Federation, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_audit_log(federation.folder.audit.path) if e["event"] == kind]


def _round(federation: Federation, number: int) -> dict[str, Any]:
    [entry] = [e for e in federation.folder.record.to_json()["rounds"] if e["round"] == number]
    return entry


def _mean_step(world: World, names: tuple[str, ...]) -> float:
    """FedAvg's move of every value in a round the named sites train (equal counts)."""
    return float(np.mean([STEP * world.site(n).node_id for n in names]))


# ---- plain rounds --------------------------------------------------------------------------


def test_a_plain_run_trains_every_site_and_records_each_round(world: World) -> None:
    federation, weights = world.run()
    start = federation.initial_weights
    np.testing.assert_allclose(weights, start + 2 * _mean_step(world, ("a", "b", "c")), atol=1e-5)
    for number in (1, 2):
        entry = _round(federation, number)
        assert entry["participants"] == ["a", "b", "c"]
        assert entry["left_out"] == {}
        assert entry["secure_aggregation"] is None
        assert entry["strategy"]["name"] == "fedavg" and entry["strategy"]["unchanged"] is None
        assert entry["strategy"]["kept"] == ["a", "b", "c"]
    assert federation.stopped is None and federation.ended_early is None
    assert federation.folder.record.to_json()["secure_aggregation"]["enabled"] is False
    # every train reply was signed and verified against the registry
    verified = _events(federation, "update_verified")
    assert {e["site"] for e in verified} == {"a", "b", "c"}
    state = RunState.load(federation.folder.path, RunIdentity.of(world.settings).config_hash)
    assert state.round == 2


def test_a_site_that_drops_out_mid_round_is_left_out(world: World) -> None:
    world.site("c").answer = _when(MessageType.TRAIN, 2, lambda request: DROP)
    federation, weights = world.run()
    round_two = _round(federation, 2)
    assert round_two["participants"] == ["a", "b"]
    assert round_two["left_out"] == {"c": "no reply before the round timeout"}
    left = [e for e in _events(federation, SITE_LEFT_OUT) if e["round"] == 2]
    assert [e["site"] for e in left] == ["c"]
    after_one = federation.initial_weights + _mean_step(world, ("a", "b", "c"))
    np.testing.assert_allclose(weights, after_one + _mean_step(world, ("a", "b")), atol=1e-5)


def test_a_forged_reply_counts_as_no_reply(world: World) -> None:
    """Site b's round-1 update is signed with c's key: the verifier drops it."""
    b, c = world.site("b"), world.site("c")

    def forged(request: Message) -> Message:
        reply = b.default_reply(request)
        c._sign(request, reply)
        return reply

    b.answer = _when(MessageType.TRAIN, 1, forged)
    federation, _ = world.run()
    round_one = _round(federation, 1)
    assert round_one["participants"] == ["a", "c"]
    assert "signed as 'c'" in round_one["left_out"]["b"]


def test_a_site_that_refuses_is_left_out_and_a_spent_budget_ends_its_training(
    world: World,
) -> None:
    world.site("a").answer = _when(
        MessageType.TRAIN,
        1,
        lambda request: error_reply(request, rk.ERROR_NOT_APPROVED, "not approved"),
    )
    world.site("b").answer = _when(
        MessageType.TRAIN,
        1,
        lambda request: error_reply(request, rk.ERROR_PRIVACY_BUDGET, "budget spent"),
    )
    federation, _ = world.run()
    round_one = _round(federation, 1)
    assert round_one["participants"] == ["c"]
    assert round_one["left_out"] == {"a": "not approved", "b": "budget spent"}
    [excluded] = _events(federation, "site_excluded")
    assert excluded["site"] == "b" and excluded["round"] == 1
    # Round 2: a trains again, b (out of budget) is only asked to evaluate.
    kinds = {
        site: [r.metadata.message_type for r in world.site(site).requests if message_round(r) == 2]
        for site in ("a", "b")
    }
    assert kinds == {"a": [MessageType.TRAIN], "b": [MessageType.EVALUATE]}
    assert _round(federation, 2)["participants"] == ["a", "c"]


# ---- too few trainers ----------------------------------------------------------------------


def test_too_few_training_sites_end_training_early(tmp_path: Path) -> None:
    world = _world(tmp_path, rounds=3, min_training_sites=3)
    world.site("b").answer = _when(
        MessageType.TRAIN,
        1,
        lambda request: error_reply(request, rk.ERROR_PRIVACY_BUDGET, "budget spent"),
    )
    federation, _ = world.run()
    assert federation.ended_early is not None and "min_training_sites=3" in federation.ended_early
    assert federation.folder.record.to_json()["ended_early"] == federation.ended_early
    assert [e["round"] for e in federation.folder.record.to_json()["rounds"]] == [0, 1]
    assert federation.stopped is None
    # the final model was still sent out for evaluation
    final = [m for m in world.grid.pushed if message_round(m) == 4]
    assert {m.metadata.message_type for m in final} == {MessageType.EVALUATE}


def test_a_round_without_its_quorum_stops_the_run_resumably(tmp_path: Path) -> None:
    world = _world(tmp_path, rounds=3, quorum=1.0)
    world.site("c").answer = _when(MessageType.TRAIN, 2, lambda request: DROP)
    federation, weights = world.run()
    assert federation.stopped is not None
    assert "round 2: 2 usable update(s) of the 3 training sites asked" in federation.stopped
    assert federation.folder.record.to_json()["stopped"]["round"] == 2
    state = RunState.load(federation.folder.path, RunIdentity.of(world.settings).config_hash)
    assert state.round == 1  # resumable after the last completed round
    np.testing.assert_allclose(
        weights, federation.initial_weights + _mean_step(world, ("a", "b", "c")), atol=1e-6
    )


# ---- secure aggregation --------------------------------------------------------------------


def _secure_world(root: Path) -> World:
    return _world(root, secure_aggregation={"mode": "on", "stage_timeout_s": 0.5}, min_sites=3)


def test_a_secure_round_sums_the_masked_updates(tmp_path: Path) -> None:
    world = _secure_world(tmp_path)
    federation, weights = world.run()
    assert federation.folder.record.to_json()["secure_aggregation"]["enabled"] is True
    np.testing.assert_allclose(
        weights,
        federation.initial_weights + 2 * _mean_step(world, ("a", "b", "c")),
        atol=1e-4,
    )
    for number in (1, 2):
        entry = _round(federation, number)
        assert entry["participants"] == ["a", "b", "c"]
        assert entry["secure_aggregation"]["status"] == "ok"
        assert entry["secure_aggregation"]["session"] == 1  # one key exchange for the run
    # the server never saw a plain update: every train reply held a masked vector
    for site in world.sites.values():
        trains = [r for r in site.requests if r.metadata.message_type == MessageType.TRAIN]
        assert all(rk.SECAGG_ROUND_KEY in r.content.config_records for r in trains)


def test_a_secure_round_fails_when_members_drop_after_masking(tmp_path: Path) -> None:
    """b and c send their masked updates in round 1, then never answer the unmask request:
    too few shares remain, the round leaves the model as it was and ends the session;
    round 2 starts a new one and aggregates."""
    world = _secure_world(tmp_path)
    unmask = f"{MessageType.TRAIN}.{rk.ACTION_SECAGG_UNMASK}"
    for name in ("b", "c"):
        world.site(name).answer = _when(unmask, 1, lambda request: DROP)
    federation, weights = world.run()
    round_one = _round(federation, 1)
    unchanged = round_one["strategy"]["unchanged"]
    assert unchanged is not None and unchanged.startswith("secure aggregation failed")
    assert round_one["secure_aggregation"]["status"] == "failed"
    np.testing.assert_array_equal(
        _checkpoint(federation, 1), _checkpoint(federation, 0)
    )  # the model stayed
    [aggregated] = [e for e in _events(federation, "aggregated") if e["round"] == 1]
    assert aggregated["secure_aggregation"] is True and aggregated["unchanged"] == unchanged
    round_two = _round(federation, 2)
    assert round_two["secure_aggregation"]["status"] == "ok"
    assert round_two["secure_aggregation"]["session"] == 2  # a new key exchange
    np.testing.assert_allclose(
        weights, federation.initial_weights + _mean_step(world, ("a", "b", "c")), atol=1e-4
    )


def _checkpoint(federation: Federation, number: int) -> np.ndarray:
    import torch

    path = federation.folder.path / _round(federation, number)["checkpoint"]
    return federation.layout.flatten(torch.load(path, weights_only=True))


# ---- resume --------------------------------------------------------------------------------


def test_resume_after_a_stop_redoes_the_round_and_matches_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """FedAdam keeps state across rounds: only a resume that restores it (from
    checkpoints/state.json) can end with the same bits as a run that never stopped."""
    settings: dict[str, Any] = {"rounds": 3, "quorum": 1.0, "strategy": {"name": "fedadam"}}
    straight = _world(tmp_path / "straight", **settings)
    _, expected = straight.run()

    world = _world(tmp_path / "resumed", **settings)
    c = world.site("c")
    c.answer = _when(MessageType.TRAIN, 2, lambda request: DROP)
    stopped, _ = world.run()
    assert stopped.stopped is not None
    path = stopped.folder.path
    assert (path / STATE_FILE).is_file()

    c.answer = lambda request: DEFAULT  # c is back
    state = RunState.load(path, RunIdentity.of(world.settings).config_hash)
    assert state.round == 1
    resumed = world.federation(RunFolder.reopen(path), resume_from=state)
    weights = resumed.run()
    assert weights.tobytes() == expected.tobytes()
    [event] = _events(resumed, RUN_RESUMED)
    assert event["from_round"] == 2 and event["redone_rounds"] == []
    assert [e["round"] for e in resumed.folder.record.to_json()["rounds"]] == [0, 1, 2, 3]
    assert RunState.load(path, RunIdentity.of(world.settings).config_hash).round == 3


def test_resume_refuses_an_audit_log_that_lost_the_checkpointed_head(tmp_path: Path) -> None:
    world = _world(tmp_path, rounds=2, quorum=1.0)
    world.site("c").answer = _when(MessageType.TRAIN, 2, lambda request: DROP)
    stopped, _ = world.run()
    path = stopped.folder.path
    state = RunState.load(path, RunIdentity.of(world.settings).config_hash)
    events = stopped.folder.audit.path
    events.write_text("", encoding="utf-8")  # the log replaced by an empty one
    from consortia.server.run.federation import FederationError

    with pytest.raises(FederationError, match="cannot resume: the audit log no longer holds"):
        world.federation(RunFolder.reopen(path), resume_from=state).run()
