"""Issue 19, F14: on a server run with `--insecure`, a node's declared site name became a
path component, and a saliency PNG was written outside the run folder. Attacked with
real Flower messages, a real run folder and a real PNG: the name is refused where it
enters (the `query` answer, the site registry) and again where it would become a path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from PIL import Image

from consortia.common.config.names import InvalidNameError, check_site_name, site_path
from consortia.common.config.settings import Role
from consortia.common.crypto.site_keys import create_site_key
from consortia.common.wire import records as rk
from consortia.server.exchange.discovery import read_answers
from consortia.server.exchange.sites import Site
from consortia.server.registry.site_registry import SiteRegistry, SiteRegistryError
from consortia.server.run.folder import EVENTS_FILE, RunFolder
from consortia.server.run.saliency_store import SALIENCY_DIR, SALIENCY_REFUSED, store_saliency

pytestmark = pytest.mark.usefixtures("server_task_identity")

ESCAPES = ["../../outside", "..", ".", "a/../../b", "/abs", "", "x" * 65, "a\\b", "n\x00"]


def _request(node_id: int, message_type: str) -> Message:
    return Message(
        RecordDict({rk.CONFIG_KEY: ConfigRecord({rk.CFG_ROUND: 0})}),
        dst_node_id=node_id,
        message_type=message_type,
        group_id="0",
    )


def _query_answer(node_id: int, name: str) -> Message:
    info = ConfigRecord(
        {
            rk.SITE_NAME: name,
            rk.SITE_ROLE: "holdout",
            rk.SITE_TASK: "segmentation",
            rk.SITE_NUM_TRAIN: 0,
            rk.SITE_NUM_EVAL: 4,
            rk.SITE_DATA_FINGERPRINT: "d" * 64,
            rk.SITE_MAX_EPSILON: 10.0,
            rk.SITE_DELTA: 1e-5,
            rk.SITE_EPSILON_SPENT: 0.0,
        }
    )
    return Message(RecordDict({rk.INFO_KEY: info}), reply_to=_request(node_id, "query"))


def _png() -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()


@pytest.mark.parametrize("name", ESCAPES)
def test_a_query_answer_with_a_path_for_a_name_is_refused(name: str) -> None:
    [answer] = read_answers({5: _query_answer(5, name)}, {}, signed=False)
    assert answer.site is None
    assert answer.refusal is not None and "invalid 'name'" in answer.refusal


def test_a_valid_name_is_accepted() -> None:
    [answer] = read_answers({5: _query_answer(5, "east-2.b_c")}, {}, signed=False)
    assert answer.refusal is None and answer.site is not None
    assert answer.site.name == "east-2.b_c"


def test_saliency_of_a_site_named_like_a_path_stays_out_of_the_file_system(
    tmp_path: Path,
) -> None:
    """Defence in depth: even a Site object built past the query check cannot write."""
    folder = RunFolder(tmp_path / "runs" / "run", {"run_name": "run"})
    evil = Site(5, "../../outside", Role.HOLDOUT, 0, 4, "d" * 64)
    reply = Message(
        RecordDict({rk.SALIENCY_KEY: ArrayRecord({"case-00": Array(_png())})}),
        reply_to=_request(5, "evaluate"),
    )
    assert store_saliency(folder, {5: evil}, {5: reply}) == 0
    assert not (tmp_path / "runs" / "outside").exists()
    assert not (tmp_path / "outside").exists()
    assert list(tmp_path.rglob("*.png")) == []
    events = [json.loads(line) for line in (folder.path / EVENTS_FILE).open()]
    [refused] = [e for e in events if e["event"] == SALIENCY_REFUSED]
    assert "invalid site name '../../outside'" in refused["reason"]


def test_site_path_refuses_a_symbolic_link(tmp_path: Path) -> None:
    (tmp_path / SALIENCY_DIR).mkdir()
    (tmp_path / SALIENCY_DIR / "east").symlink_to(tmp_path)
    with pytest.raises(InvalidNameError, match="symbolic link"):
        site_path(tmp_path / SALIENCY_DIR, "east")
    assert site_path(tmp_path / SALIENCY_DIR, "west") == tmp_path / SALIENCY_DIR / "west"


@pytest.mark.parametrize("name", ESCAPES)
def test_the_site_registry_refuses_a_path_for_a_name(tmp_path: Path, name: str) -> None:
    keys = create_site_key(tmp_path / "keys", "east")
    with pytest.raises(SiteRegistryError, match="invalid site name"):
        SiteRegistry(tmp_path / "sites").register(name, keys.public_key)
    assert not (tmp_path / "sites").exists()


def test_check_site_name_names_the_field() -> None:
    assert check_site_name("east") == "east"
    with pytest.raises(InvalidNameError, match=r"invalid 'name' '\.\./x'"):
        check_site_name("../x", "'name'")
    with pytest.raises(InvalidNameError, match="invalid site name 3"):
        check_site_name(3)
