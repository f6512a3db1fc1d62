"""The refusal mod: each refusal a handler raises becomes its error reply (code, reason
the server may read, log line at the site); other exceptions pass on to the error mod.

First the mod alone with real Flower messages and the real exception classes, then the
site's whole ClientApp (error, approval, signing and refusal mods) with a real site
folder (demo npz, site config, site key, approvals): the refusal comes after approval,
leaves the site unsigned and unaudited as an update, and names no local file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from consortia.client.client_app import LayoutMismatchError, app
from consortia.client.mods.approval import approval_mod
from consortia.client.mods.error import error_mod
from consortia.client.mods.refusal import REFUSALS, handler_name, refusal_mod
from consortia.client.mods.signing import signing_mod
from consortia.client.privacy.budget import PrivacyRefusedError
from consortia.client.privacy.evaluation_allowance import EvaluationRefusedError
from consortia.client.release_cache import ReleaseCacheError
from consortia.common.audit.approvals import ApprovalStore
from consortia.common.audit.check import read_audit_log
from consortia.common.audit.log import AUDIT_LOG_FILE, UPDATE_SENT
from consortia.common.config.settings import RunSettings, SiteSettings, load_site_settings
from consortia.common.crypto.site_keys import create_site_key
from consortia.common.demo.data import DemoDataSettings, write_site_npz
from consortia.common.errors import ConfigError, DataError
from consortia.common.networks.models import build_model
from consortia.common.networks.weights import WeightLayout
from consortia.common.privacy.ledger import LedgerError
from consortia.common.secure_aggregation.config import SecAggError
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.record_fields import RecordFieldError
from consortia.common.wire.run_identity import app_hash

NODE = 3
SECRET = "/hospital/north/private-cohort.npz"  # a local path no reply may carry
SETTINGS = RunSettings.model_validate(
    {
        "name": "refusals",
        "rounds": 2,
        "model": {"channels": [8, 16], "strides": [2], "norm_groups": 4, "num_res_units": 0},
        "training": {"batch_size": 8},
    }
)


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    """What Flower's runtime sets before messages exist (real messages need it)."""
    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = 9
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


def _message(message_type: str, content: RecordDict | None = None) -> Message:
    return Message(content or RecordDict(), dst_node_id=NODE, message_type=message_type)


def _raising(error: Exception) -> Callable[[Message, Context], Message]:
    def handler(msg: Message, context: Context) -> Message:
        raise error

    return handler


def _context(site: Path) -> Context:
    return Context(
        run_id=9,
        node_id=NODE,
        node_config={rk.NODE_CONFIG_SITE_CONFIG: str(site)},
        state=RecordDict(),
        run_config={rk.RUN_CONFIG_SETTINGS: SETTINGS.to_json()},
    )


# -- the mod alone ------------------------------------------------------------------------

# (exception, message type, code, reason, log level, log line)
CASES: list[tuple[Exception, str, int, str, int, str]] = [
    (
        EvaluationRefusedError("round 9 was already evaluated"),
        "evaluate",
        rk.ERROR_REFUSED,
        "round 9 was already evaluated",
        logging.WARNING,
        "evaluation refused: round 9 was already evaluated",
    ),
    (
        ReleaseCacheError("the kept release is gone"),
        "train",
        rk.ERROR_REFUSED,
        "the kept release is gone",
        logging.ERROR,
        "round refused: the kept release is gone",
    ),
    (
        SecAggError("session refused: 2 sites"),
        "train.secagg_keys",
        rk.ERROR_SECAGG,
        "secure aggregation: session refused: 2 sites",
        logging.ERROR,
        "secure aggregation: session refused: 2 sites",
    ),
    (
        DataError(f"{SECRET}: not an npz file"),
        "query",
        rk.ERROR_SITE_DATA,
        "site data unusable for this task; see node log",
        logging.ERROR,
        f"site data unusable: {SECRET}: not an npz file",
    ),
    (
        ConfigError(f"{SECRET}: no such data set"),
        "evaluate",
        rk.ERROR_SITE_DATA,
        "site data unusable for this task; see node log",
        logging.ERROR,
        f"site data unusable: {SECRET}: no such data set",
    ),
    (
        RecordFieldError("'secagg.config' is missing"),
        "train.secagg_keys",
        rk.ERROR_BAD_MESSAGE,
        "malformed secagg_keys message: 'secagg.config' is missing",
        logging.ERROR,
        "malformed secagg_keys message: 'secagg.config' is missing",
    ),
    (
        LayoutMismatchError("the server's model layout differs"),
        "evaluate",
        rk.ERROR_BAD_MESSAGE,
        "malformed evaluate message: the server's model layout differs",
        logging.ERROR,
        "malformed evaluate message: the server's model layout differs",
    ),
    (
        PrivacyRefusedError("round 3 is outside the approved run's rounds 1..2"),
        "train",
        rk.ERROR_PRIVACY_BUDGET,
        "round 3 is outside the approved run's rounds 1..2",
        logging.WARNING,
        "round refused by the site's privacy policy: round 3 is outside the approved "
        "run's rounds 1..2",
    ),
    (
        LedgerError(f"{SECRET}.ledger: the ledger is missing"),
        "train",
        rk.ERROR_PRIVACY_BUDGET,
        "the site's privacy ledger is unusable; see node log",
        logging.ERROR,
        f"privacy ledger unusable, refusing to train: {SECRET}.ledger: the ledger is missing",
    ),
]


@pytest.mark.parametrize(
    ("error", "message_type", "code", "reason", "level", "line"),
    CASES,
    ids=[type(case[0]).__name__ for case in CASES],
)
def test_each_refusal_becomes_its_error_reply(
    site: Path,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    message_type: str,
    code: int,
    reason: str,
    level: int,
    line: str,
) -> None:
    msg = _message(message_type)
    with caplog.at_level(logging.INFO, logger="consortia.client"):
        reply = refusal_mod(msg, _context(site), _raising(error))
    assert reply.has_error() and not reply.has_content()
    assert reply.error.code == code
    assert reply.error.reason == reason
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(level, line)]


def test_every_refusal_family_is_covered_once() -> None:
    """The table answers each family the handlers raise, in one place each."""
    families = [error for refusal in REFUSALS for error in refusal.errors]
    assert len(families) == len(set(families))
    assert {type(case[0]) for case in CASES} - {LayoutMismatchError} == set(families)
    assert issubclass(LayoutMismatchError, RecordFieldError)  # a malformed message


def test_a_reply_and_other_exceptions_pass_through(site: Path) -> None:
    msg = _message("query")
    answer = Message(RecordDict({"ok": ConfigRecord({"ok": True})}), reply_to=msg)
    assert refusal_mod(msg, _context(site), lambda m, c: answer) is answer
    with pytest.raises(ValueError, match="not a refusal"):
        refusal_mod(msg, _context(site), _raising(ValueError("not a refusal")))
    # outside it, the error mod keeps the exception's text at the site
    reply = error_mod(
        msg,
        _context(site),
        lambda m, c: refusal_mod(m, c, _raising(ValueError(f"{SECRET} not a refusal"))),
    )
    assert reply.error.code == int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
    assert "ValueError" in str(reply.error.reason) and SECRET not in str(reply.error.reason)


def test_the_handler_is_the_action_else_the_category() -> None:
    assert handler_name(_message("train")) == "train"
    assert handler_name(_message("query")) == "query"
    assert handler_name(_message("train.secagg_unmask")) == "secagg_unmask"
    assert handler_name(_message("evaluate.default")) == "evaluate"  # Flower's default


# -- the whole ClientApp ------------------------------------------------------------------


def test_the_refusal_mod_is_the_innermost_mod() -> None:
    """Errors outermost (they cover every mod), approval before any handler runs, the
    signature over every reply the handlers give, refusals inside it (left unsigned)."""
    assert app._mods == [error_mod, approval_mod, signing_mod, refusal_mod]


@pytest.fixture()
def keyed_site(tmp_path: Path) -> Path:
    """A training site with its own key (replies are signed and audited) and demo data."""
    key = create_site_key(tmp_path / "keys", "north").private_key
    data = DemoDataSettings(image_size=32, train_cases=8, test_cases=2)
    write_site_npz(tmp_path / "data.npz", 0, data)
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nname = "north"\nrole = "train"\n[data]\npath = "data.npz"\n'
        f'[node]\ninsecure = true\nstate_dir = "state"\nkey = "{key}"\n'
        "[privacy]\nallow_non_private = true\n",
        encoding="utf-8",
    )
    return config


def _train_message(fingerprint: str, **records: Any) -> Message:
    """A train message of the approved run, with a nonce (its reply is to be signed)."""
    s = SETTINGS
    model = build_model(s.model.to_model_settings())
    weights = WeightLayout.of(model.state_dict()).flatten(model.state_dict())
    instruction = Instruction(
        round=1,
        run_name=s.name,
        task=s.task,
        model=s.model.to_model_settings(),
        layout_fingerprint=fingerprint,
        batch_size=s.training.batch_size,
        surface_metrics=False,
        local_epochs=s.training.local_epochs,
        learning_rate=s.training.learning_rate,
        seed=s.seed,
        run_id="run-a",
        total_rounds=s.rounds,
        privacy=s.privacy,
        dataset=s.dataset,
        app_hash=app_hash(),
        proximal_mu=s.strategy.proximal_mu,
    )
    config = instruction.to_config()
    config[rk.CFG_NONCE] = "nonce-1"
    content = RecordDict(
        {rk.CONFIG_KEY: config, rk.ARRAYS_KEY: ArrayRecord({rk.WEIGHTS_ARRAY: Array(weights)})}
    )
    for key, record in records.items():
        content[key] = record
    return Message(content, dst_node_id=NODE, message_type="train", group_id="1")


def _events(site: SiteSettings) -> list[str]:
    return [str(record["event"]) for record in read_audit_log(site.state_path / AUDIT_LOG_FILE)]


def test_the_app_refuses_after_approval_and_neither_signs_nor_audits_a_refusal(
    keyed_site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = load_site_settings(keyed_site)
    msg = _train_message("another-layout")
    # unapproved: the approval mod (outside) answers before any handler runs
    assert app(msg, _context(keyed_site)).error.code == rk.ERROR_NOT_APPROVED
    ApprovalStore.for_site(site).approve(SETTINGS, by="test")
    with caplog.at_level(logging.INFO, logger="consortia.client"):
        reply = app(_train_message("another-layout"), _context(keyed_site))
    assert reply.has_error() and not reply.has_content()  # no signature, no update
    assert reply.error.code == rk.ERROR_BAD_MESSAGE
    assert str(reply.error.reason).startswith("malformed train message: the server's model")
    assert "malformed train message" in caplog.text
    assert UPDATE_SENT not in _events(site)
    assert not list(site.ledger_dir.glob("*.json"))  # refused before the ledger


def test_the_app_answers_a_secure_stage_without_a_session_as_a_secagg_refusal(
    keyed_site: Path,
) -> None:
    ApprovalStore.for_site(load_site_settings(keyed_site)).approve(SETTINGS, by="test")
    unmask = _message("train.secagg_unmask", RecordDict({rk.SECAGG_KEY: ConfigRecord({})}))
    reply = app(unmask, _context(keyed_site))
    assert reply.error.code == rk.ERROR_SECAGG
    assert str(reply.error.reason).startswith(
        "secure aggregation: no secure-aggregation session on this node"
    )


def test_the_app_reports_unusable_site_data_without_its_path(
    keyed_site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = load_site_settings(keyed_site)
    ApprovalStore.for_site(site).approve(SETTINGS, by="test")
    data = keyed_site.parent / "data.npz"
    data.write_bytes(b"not an npz archive")
    with caplog.at_level(logging.INFO, logger="consortia.client"):
        reply = app(_train_message(_layout_fingerprint()), _context(keyed_site))
    assert reply.error.code == rk.ERROR_SITE_DATA
    assert reply.error.reason == "site data unusable for this task; see node log"
    assert "site data unusable:" in caplog.text and "data.npz" in caplog.text
    assert UPDATE_SENT not in _events(site)


def _layout_fingerprint() -> str:
    model = build_model(SETTINGS.model.to_model_settings())
    return WeightLayout.of(model.state_dict()).fingerprint()
