"""Saliency maps end to end in process: drawn at a held-out site in the final evaluation,
kept in its state folder, shared only when its config says so, checked and kept by the
server (real models, real PNG files, real Flower messages and audit logs)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from PIL import Image

from consortia.client.data.site_data import SiteArrays
from consortia.client.saliency.release import (
    SALIENCY_WRITTEN,
    saliency_record,
    write_final_saliency,
)
from consortia.common.audit.log import AUDIT_LOG_FILE
from consortia.common.config.settings import ModelConfig, Role, SiteSettings, Task
from consortia.common.networks.models import build_model
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.server.exchange.sites import Site
from consortia.server.run.folder import EVENTS_FILE, RunFolder
from consortia.server.run.saliency_store import (
    SALIENCY_DIR,
    SALIENCY_RECEIVED,
    SALIENCY_REFUSED,
    SaliencyError,
    check_png,
    store_saliency,
)

# Real request and reply messages, as in a ServerApp process.
pytestmark = pytest.mark.usefixtures("server_task_identity")

MODEL = ModelConfig(channels=(8, 16), strides=(2,), norm_groups=4, num_res_units=0)
HOLDOUT = Site(7, "east", Role.HOLDOUT, 0, 6, "f" * 64)
TRAINER = Site(8, "north", Role.TRAIN, 10, 4, "e" * 64)


def _site(tmp_path: Path, role: str, saliency: str) -> SiteSettings:
    return SiteSettings.model_validate(
        {
            "site": {"name": "east", "role": role},
            "data": {"path": str(tmp_path / "data.npz")},
            "node": {"state_dir": str(tmp_path / "state")},
            "saliency": json.loads(saliency),
        }
    )


def _instruction(round_number: int) -> Instruction:
    return Instruction(
        task=Task.SEGMENTATION,
        run_name="study",
        run_id="study-1",
        round=round_number,
        total_rounds=2,
        model=MODEL.to_model_settings(),
        layout_fingerprint="",
        local_epochs=1,
        batch_size=4,
        learning_rate=0.01,
        seed=3,
        surface_metrics=True,
    )


def _data() -> SiteArrays:
    rng = np.random.default_rng(0)
    return SiteArrays(
        rng.uniform(0, 1, (6, 1, 32, 32)).astype(np.float32), np.zeros((6, 32, 32), np.int64)
    )


def test_held_out_site_keeps_its_maps_and_audits_them(tmp_path: Path) -> None:
    site = _site(tmp_path, "holdout", '{"images": 3}')
    model = build_model(MODEL.to_model_settings())
    paths = write_final_saliency(model, _data(), _instruction(3), site, torch.device("cpu"))
    assert [p.name for p in paths] == ["case-00.png", "case-01.png", "case-02.png"]
    assert all(p.parent == tmp_path / "state" / "saliency" / "study-1" for p in paths)
    with Image.open(paths[0]) as png:
        assert png.format == "PNG"
    records = [json.loads(line) for line in (tmp_path / "state" / AUDIT_LOG_FILE).open()]
    [written] = [r for r in records if r["event"] == SALIENCY_WRITTEN]
    assert written["images"] == 3 and written["shared"] is False and len(written["sha256"]) == 3
    # not the final evaluation, not a held-out site, or none asked for: nothing drawn
    device = torch.device("cpu")
    assert write_final_saliency(model, _data(), _instruction(2), site, device) == []
    trainer = _site(tmp_path / "t", "train", '{"images": 3}')
    assert write_final_saliency(model, _data(), _instruction(3), trainer, device) == []
    off = _site(tmp_path / "o", "holdout", '{"images": 0}')
    assert write_final_saliency(model, _data(), _instruction(3), off, device) == []
    # a run id that would lead out of the state folder is refused
    escape = replace(_instruction(3), run_id="../../etc")
    assert write_final_saliency(model, _data(), escape, site, device) == []


def _reply(node_id: int, arrays: dict[str, Array]) -> Message:
    request = Message(
        RecordDict({rk.CONFIG_KEY: ConfigRecord({rk.CFG_ROUND: 3})}),
        dst_node_id=node_id,
        message_type="evaluate",
        group_id="3",
    )
    return Message(RecordDict({rk.SALIENCY_KEY: ArrayRecord(arrays)}), reply_to=request)


def _png_bytes(size: int = 8) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size, size), np.uint8)).save(buffer, format="PNG")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()


def test_server_keeps_shared_maps_and_refuses_anything_else(tmp_path: Path) -> None:
    site = _site(tmp_path, "holdout", '{"images": 2, "share": true}')
    paths = write_final_saliency(
        build_model(MODEL.to_model_settings()), _data(), _instruction(3), site, torch.device("cpu")
    )
    folder = RunFolder(tmp_path / "run", {"run_name": "study-1"})
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(jpeg, format="JPEG")
    replies = {
        HOLDOUT.node_id: _reply(HOLDOUT.node_id, dict(saliency_record(paths).items())),
        TRAINER.node_id: _reply(TRAINER.node_id, {"case-00": Array(_png_bytes())}),
        9: _reply(9, {"case-00": Array(np.frombuffer(jpeg.getvalue(), np.uint8).copy())}),
    }
    sites = {
        s.node_id: s for s in (HOLDOUT, TRAINER, Site(9, "west", Role.HOLDOUT, 0, 4, "d" * 64))
    }
    assert store_saliency(folder, sites, replies) == 2
    kept = sorted((tmp_path / "run" / SALIENCY_DIR / "east").iterdir())
    assert [p.name for p in kept] == ["case-00.png", "case-01.png"]
    assert [p.read_bytes() for p in kept] == [p.read_bytes() for p in paths]
    assert not (tmp_path / "run" / SALIENCY_DIR / "north").exists()
    assert not (tmp_path / "run" / SALIENCY_DIR / "west").exists()
    events = [json.loads(line) for line in (tmp_path / "run" / EVENTS_FILE).open()]
    [received] = [e for e in events if e["event"] == SALIENCY_RECEIVED]
    assert received["site"] == "east" and received["images"] == 2
    refused = {e["site"]: e["reason"] for e in events if e["event"] == SALIENCY_REFUSED}
    assert refused == {
        "north": "only held-out sites share saliency maps",
        "west": "case-00: a JPEG picture, not PNG",
    }


def test_check_png_refuses_what_is_not_a_small_png() -> None:
    assert check_png("case-01", _png_bytes()).startswith(b"\x89PNG")
    with pytest.raises(SaliencyError, match="is not case-NN"):
        check_png("../x", _png_bytes())
    with pytest.raises(SaliencyError, match="uint8 vector"):
        check_png("case-00", _png_bytes().astype(np.int16))
    with pytest.raises(SaliencyError, match="not a readable PNG"):
        check_png("case-00", np.frombuffer(b"\x89PNG not really", np.uint8).copy())
    truncated = _png_bytes(64)[:60]
    with pytest.raises(SaliencyError, match="case-00"):
        check_png("case-00", truncated)
