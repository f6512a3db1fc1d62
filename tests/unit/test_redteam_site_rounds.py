"""Red-team findings of issue 19 about what a training site spends and sends, attacked
through the site's real ClientApp (its mods and handlers) with real Flower messages, a
real site folder (demo npz, site config, approvals) and real DP-SGD training.

- F3: under DP the raw training loss (unbounded sensitivity) does not leave the site.
- F7: the run's privacy target is keyed on the approved config, not on the server's run
  id, and a round beyond the approved `rounds` is refused.
- F13: a secure round that can never be sent (wrong vector size, non-finite weight
  norm) is refused before any budget is spent.
- F16: an uncaught exception's text (here a local path) stays at the site.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

from consortia.client.client_app import app
from consortia.client.secure_aggregation.session import SecAggClient
from consortia.common.audit.approvals import ApprovalStore
from consortia.common.config.settings import Role, RunSettings, SiteSettings, load_site_settings
from consortia.common.demo.data import DemoDataSettings, write_site_npz
from consortia.common.networks.models import build_model
from consortia.common.networks.weights import WeightLayout
from consortia.common.privacy.ledger import PrivacyLedger
from consortia.common.secure_aggregation.config import SecAggConfig
from consortia.common.secure_aggregation.wire import (
    decode_public_keys,
    encode_public_keys,
    encode_round,
)
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.run_identity import app_hash, config_hash
from consortia.server.exchange.sites import Site as Site_
from consortia.server.exchange.updates import accept_update
from consortia.server.run.privacy import RunPrivacy
from consortia.server.secure_aggregation.session import SecAggServer

pytestmark = pytest.mark.usefixtures("server_task_identity")

NODE = 1
TRAIN_CASES = 16


def _settings(**changes: Any) -> RunSettings:
    data: dict[str, Any] = {
        "name": "redteam",
        "rounds": 2,
        "model": {"channels": [8, 16], "strides": [2], "norm_groups": 4, "num_res_units": 0},
        "training": {"batch_size": 8},
    } | changes
    return RunSettings.model_validate(data)


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "north"
    folder.mkdir()
    settings = DemoDataSettings(image_size=32, train_cases=TRAIN_CASES, test_cases=4)
    write_site_npz(folder / "data.npz", 0, settings)
    config = folder / "site.toml"
    config.write_text(
        '[site]\nname = "north"\nrole = "train"\n[data]\npath = "data.npz"\n'
        '[node]\ninsecure = true\nstate_dir = "state"\n',
        encoding="utf-8",
    )
    return config


class Site:
    """One approved run at the site: builds the server's messages and sends them through
    the site's ClientApp, as the SuperNode does."""

    def __init__(self, config: Path, settings: RunSettings) -> None:
        self.config, self.settings = config, settings
        self.site: SiteSettings = load_site_settings(config)
        ApprovalStore.for_site(self.site).approve(settings, by="test")
        model = build_model(settings.model.to_model_settings())
        self.layout = WeightLayout.of(model.state_dict())
        self.weights = self.layout.flatten(model.state_dict())
        self.context = Context(
            run_id=31,
            node_id=NODE,
            node_config={rk.NODE_CONFIG_SITE_CONFIG: str(config)},
            state=RecordDict(),
            run_config={rk.RUN_CONFIG_SETTINGS: settings.to_json()},
        )

    def instruction(self, round_number: int, run_id: str, **changes: Any) -> Instruction:
        s = self.settings
        fields: dict[str, Any] = {
            "round": round_number,
            "run_name": s.name,
            "task": s.task,
            "model": s.model.to_model_settings(),
            "layout_fingerprint": self.layout.fingerprint(),
            "batch_size": s.training.batch_size,
            "surface_metrics": False,
            "local_epochs": s.training.local_epochs,
            "learning_rate": s.training.learning_rate,
            "seed": s.seed,
            "run_id": run_id,
            "total_rounds": s.rounds,
            "privacy": s.privacy,
            "dataset": s.dataset,
            "app_hash": app_hash(),
            "proximal_mu": s.strategy.proximal_mu,
        } | changes
        return Instruction(**fields)

    def train(
        self, round_number: int, run_id: str = "run-a", records: dict[str, Any] | None = None
    ) -> Message:
        return self.send(self.train_message(round_number, run_id, records))

    def train_message(
        self,
        round_number: int,
        run_id: str = "run-a",
        records: dict[str, Any] | None = None,
        **changes: Any,
    ) -> Message:
        content = RecordDict(
            {
                rk.CONFIG_KEY: self.instruction(round_number, run_id, **changes).to_config(),
                rk.ARRAYS_KEY: ArrayRecord({rk.WEIGHTS_ARRAY: Array(self.weights)}),
            }
        )
        for key, record in (records or {}).items():
            content[key] = record
        return Message(content, dst_node_id=NODE, message_type="train", group_id=str(round_number))

    def send(self, msg: Message) -> Message:
        """The ClientApp as Flower's runtime calls it (`run_clientapp`): an exception that
        escapes the app becomes an error reply carrying the exception's text."""
        try:
            return app(msg, self.context)
        except Exception as ex:  # what Flower 1.41 does with it
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            code = int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
            return Message(Error(code=code, reason=reason), reply_to=msg)

    def ledger_entries(self) -> int:
        paths = list(self.site.ledger_dir.glob("*.json"))
        return sum(len(PrivacyLedger.load(path).entries) for path in paths)


def _error(reply: Message) -> tuple[int, str]:
    assert reply.has_error(), "the site answered instead of refusing"
    return reply.error.code, str(reply.error.reason)


# -- F3 -----------------------------------------------------------------------------------


def test_f3_a_dp_round_sends_no_training_loss(site: Path) -> None:
    north = Site(site, _settings())
    reply = north.train(1)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content.metric_records[rk.TRAIN_METRICS_KEY]
    assert rk.PRIVACY_KEY in reply.content  # a DP round
    assert rk.M_TRAIN_LOSS not in metrics
    assert metrics[rk.M_NUM_EXAMPLES] == TRAIN_CASES
    # a resend of the same round (server restarted) sends the kept release, no loss either
    again = north.train(1)
    assert rk.M_TRAIN_LOSS not in again.content.metric_records[rk.TRAIN_METRICS_KEY]
    assert north.ledger_entries() == 1
    # the server accepts the DP update without a loss, and records none
    server_site = Site_(
        node_id=NODE,
        name="north",
        role=Role.TRAIN,
        num_train=TRAIN_CASES,
        num_eval=4,
        data_fingerprint="f" * 64,
    )
    accepted = accept_update(server_site, reply, north.weights, RunPrivacy(north.settings), dp=True)
    assert accepted.examples == TRAIN_CASES and "loss" not in accepted.info


# -- F7 -----------------------------------------------------------------------------------


def test_f7_a_round_beyond_the_approved_rounds_is_refused(site: Path) -> None:
    north = Site(site, _settings(rounds=1, privacy={"target_epsilon": 2.0}))
    code, reason = _error(north.train(2))
    assert code == rk.ERROR_PRIVACY_BUDGET
    assert "round 2 is outside the approved run's rounds 1..1" in reason
    code, reason = _error(north.train(0))
    assert "round 0 is outside" in reason
    assert north.ledger_entries() == 0


def test_f7_a_new_run_id_does_not_reset_the_approved_target(site: Path) -> None:
    settings = _settings(rounds=1, privacy={"target_epsilon": 2.0})
    north = Site(site, settings)
    assert not north.train(1, run_id="run-a").has_error()
    # the server starts "another" run of the same approved config: the target is spent
    code, reason = _error(north.train(1, run_id="run-b"))
    assert code == rk.ERROR_PRIVACY_BUDGET
    assert f"approved run config {config_hash(settings)[:12]}" in reason
    assert "over the run's target 2" in reason
    entries = PrivacyLedger.load(next(north.site.ledger_dir.glob("*.json"))).entries
    assert [(e.run_id, e.config_hash) for e in entries] == [("run-a", config_hash(settings))]


def test_f7_a_fixed_noise_run_cannot_be_repeated_under_new_run_ids(site: Path) -> None:
    north = Site(site, _settings(rounds=1, privacy={"noise_multiplier": 2.0}))
    assert not north.train(1, run_id="run-a").has_error()
    code, reason = _error(north.train(1, run_id="run-b"))
    assert code == rk.ERROR_PRIVACY_BUDGET and "over the run's target" in reason
    assert north.ledger_entries() == 1


# -- F13 ----------------------------------------------------------------------------------


def _secure_setup(north: Site, vector_size: int) -> dict[str, Any]:
    """A secure-aggregation session of five nodes (the site is node 1) through the
    site's keys stage; returns the records of a secure train message for round 1."""
    sa = north.settings.secure_aggregation
    threshold, neighbours = sa.parameters_for(5)
    cfg = SecAggConfig(
        session=7,
        participants=(1, 2, 3, 4, 5),
        threshold=threshold,
        neighbours=neighbours,
        clip_range=sa.clip_range,
        vector_size=vector_size,
    )
    keys_msg = Message(
        RecordDict({rk.SECAGG_CONFIG_KEY: ConfigRecord(cfg.to_config())}),
        dst_node_id=NODE,
        message_type="train.secagg_keys",
        group_id="0",
    )
    keys_reply = north.send(keys_msg)
    assert not keys_reply.has_error(), keys_reply.error.reason if keys_reply.has_error() else ""
    keys = decode_public_keys(keys_reply.content[rk.SECAGG_KEY], "site")
    for node in (2, 3, 4, 5):
        _, keys[node] = SecAggClient.start(cfg, node)
    server = SecAggServer(cfg)
    forwarded = server.receive_public_keys(keys)
    return {
        rk.SECAGG_PEERS_KEY: ConfigRecord(encode_public_keys(forwarded[NODE])),
        rk.SECAGG_ROUND_KEY: ConfigRecord(encode_round(1, [1, 2, 3, 4, 5])),
    }


def test_f13_a_secure_round_of_the_wrong_vector_size_spends_no_budget(site: Path) -> None:
    north = Site(site, _settings(secure_aggregation={"mode": "auto"}))  # "on" needs a roster
    records = _secure_setup(north, vector_size=10)  # the model's update is far longer
    msg = north.train_message(1, records=records, secure=True, weight_norm=float(TRAIN_CASES))
    code, reason = _error(north.send(msg))
    assert north.ledger_entries() == 0  # refused before DP-SGD and the ledger
    assert code == rk.ERROR_SECAGG and "vectors of 10 values" in reason


@pytest.mark.parametrize("weight_norm", [float("nan"), float("inf")])
def test_f13_a_non_finite_weight_norm_spends_no_budget(site: Path, weight_norm: float) -> None:
    north = Site(site, _settings(secure_aggregation={"mode": "auto"}))  # "on" needs a roster
    records = _secure_setup(north, vector_size=north.layout.size + 1)
    msg = north.train_message(1, records=records, secure=True, weight_norm=weight_norm)
    code, reason = _error(north.send(msg))
    assert north.ledger_entries() == 0  # refused before DP-SGD and the ledger
    assert code == rk.ERROR_BAD_MESSAGE and "is not a finite number" in reason


# -- F16 ----------------------------------------------------------------------------------


def test_f16_an_uncaught_exception_leaves_no_local_path(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    north = Site(site, _settings())
    north.site.state_path.mkdir(parents=True, exist_ok=True)
    north.site.ledger_dir.write_text("not a folder", encoding="utf-8")  # OSError with a path
    with caplog.at_level(logging.ERROR, logger="consortia.client"):
        reply = north.train(1)
    code, reason = _error(reply)
    assert code == int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
    assert str(site.parent) not in reason and "north" not in reason
    assert re.fullmatch(
        r"the site could not handle the train message \((FileExists|NotADirectory)Error\); "
        r"details in the node log",
        reason,
    ), reason
    # the details stay in the node's own log
    assert any(
        record.exc_info and str(north.site.ledger_dir) in str(record.exc_info[1])
        for record in caplog.records
    )


def test_f16_the_error_mod_is_the_outermost_mod() -> None:
    from consortia.client.mods.error import error_mod  # new with the fix of F16

    assert app._mods[0] is error_mod


# -- F4 -----------------------------------------------------------------------------------


def _evaluate_message(north: Site, round_number: int, weights: Any) -> Message:
    content = RecordDict(
        {
            rk.CONFIG_KEY: north.instruction(round_number, "run-a", local_epochs=0).to_config(),
            rk.ARRAYS_KEY: ArrayRecord({rk.WEIGHTS_ARRAY: Array(weights)}),
        }
    )
    return Message(content, dst_node_id=NODE, message_type="evaluate", group_id=str(round_number))


def test_f4_evaluation_is_no_oracle_on_chosen_models(site: Path) -> None:
    """A hostile server sends chosen weights under a used round number, and a round past
    the final one: both refused through the real ClientApp; the final bootstrap once."""
    north = Site(site, _settings())
    first = north.send(_evaluate_message(north, 1, north.weights))
    assert not first.has_error(), first.error.reason if first.has_error() else ""
    again = north.send(_evaluate_message(north, 1, north.weights))  # a resend: answered
    assert not again.has_error()
    chosen = north.weights * 0.5
    code, reason = _error(north.send(_evaluate_message(north, 1, chosen)))
    assert code == rk.ERROR_REFUSED and "already evaluated on another model" in reason
    code, reason = _error(north.send(_evaluate_message(north, 9, chosen)))
    assert code == rk.ERROR_REFUSED and "has 2 rounds" in reason
    final = north.send(_evaluate_message(north, 3, chosen))
    assert rk.EVAL_BOOTSTRAP_KEY in final.content.metric_records
    repeated = north.send(_evaluate_message(north, 3, chosen))
    assert not repeated.has_error()
    assert rk.EVAL_BOOTSTRAP_KEY not in repeated.content.metric_records  # no second draw
