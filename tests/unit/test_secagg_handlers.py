"""The site refuses secure-aggregation sessions whose parameters its approved run does not
imply (a server must not lower the threshold, change the clipping range or run a session
too small to hide anyone), with real Flower messages and contexts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from consortia.client.secure_aggregation.handlers import secagg_keys
from consortia.common.config.security_settings import SecureAggregationSettings
from consortia.common.config.settings import RosterEntry, RunSettings
from consortia.common.secure_aggregation.config import SecAggConfig, SecAggError
from consortia.common.secure_aggregation.wire import decode_public_keys
from consortia.common.wire import records as rk


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = 5
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


# Mode "on" needs a roster of at least two training sites (red-team F2, `roster_refusal`).
ROSTER = tuple(RosterEntry(name=f"s{i}", fingerprint=f"SHA256:{i:A>43}") for i in range(1, 7))
SETTINGS = RunSettings(sites=ROSTER, secure_aggregation=SecureAggregationSettings(mode="on"))


def _keys_message(config: SecAggConfig) -> Message:
    content = RecordDict({rk.SECAGG_CONFIG_KEY: ConfigRecord(config.to_config())})
    return Message(content, dst_node_id=1, message_type="train.secagg_keys", group_id="1")


def _context(site: Path, settings: RunSettings = SETTINGS) -> Context:
    return Context(
        run_id=5,
        node_id=1,
        node_config={rk.NODE_CONFIG_SITE_CONFIG: str(site)},
        state=RecordDict(),
        run_config={rk.RUN_CONFIG_SETTINGS: settings.to_json()},
    )


def _config(sites: int, **changes: object) -> SecAggConfig:
    threshold, neighbours = SETTINGS.secure_aggregation.parameters_for(sites)
    fields: dict[str, object] = {
        "session": 3,
        "participants": tuple(range(1, sites + 1)),
        "threshold": threshold,
        "neighbours": neighbours,
        "clip_range": SETTINGS.secure_aggregation.clip_range,
        "vector_size": 10,
    } | changes
    return SecAggConfig(**fields)  # type: ignore[arg-type]


def test_the_approved_parameters_start_a_session(site: Path) -> None:
    context = _context(site)
    reply = secagg_keys(_keys_message(_config(5)), context)
    keys = decode_public_keys(reply.content[rk.SECAGG_KEY], "test")
    assert set(keys) == {1} and set(keys[1]) == {"c", "s"}
    assert rk.SECAGG_STATE_KEY in context.state


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"threshold": 3}, "threshold 3, the approved run implies 4"),
        ({"clip_range": 100.0}, "clip range 100.0, approved 4.0"),
        ({"neighbours": 2, "threshold": 3}, "2 neighbours"),
    ],
)
def test_weakened_sessions_are_refused(
    site: Path, changes: dict[str, object], problem: str
) -> None:
    with pytest.raises(SecAggError, match=problem):
        secagg_keys(_keys_message(_config(5, **changes)), _context(site))


def test_auto_mode_refuses_a_session_below_min_sites(site: Path) -> None:
    auto = RunSettings(secure_aggregation=SecureAggregationSettings(mode="auto"))
    with pytest.raises(SecAggError, match="2 sites, the approved run needs at least 3"):
        secagg_keys(_keys_message(_config(2)), _context(site, auto))
