"""The site's Flower ClientApp (Message API): answers `query`, `train` and `evaluate`.

Only model weights, example counts and metric sums/counts leave the site. Problems with
the site's data are logged here in full and reported to the server without file names.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from consortia.client.site_data import SiteArrays, data_fingerprint, load_npz_splits
from consortia.client.trainer import evaluate_local, train_local
from consortia.common import records as rk
from consortia.common.device import select_device
from consortia.common.errors import ConsortiaError
from consortia.common.models import ModelSettings, build_model
from consortia.common.settings import Role, SiteSettings, Task, load_site_settings
from consortia.common.weights import WeightLayout

__all__ = ["ERROR_REFUSED", "ERROR_SITE_DATA", "app"]

logger = logging.getLogger("consortia.client")

ERROR_SITE_DATA = 4101
ERROR_REFUSED = 4102

app = ClientApp()


def _site(context: Context) -> SiteSettings:
    path = context.node_config.get(rk.NODE_CONFIG_SITE_CONFIG)
    if not isinstance(path, str) or not path:
        raise ConsortiaError(f"node config has no '{rk.NODE_CONFIG_SITE_CONFIG}'")
    return load_site_settings(Path(path))


def _eval_splits(site: SiteSettings) -> tuple[str, ...]:
    # A held-out site never trained on anything: all of its cases are test cases.
    return ("train", "val", "test") if site.site.role is Role.HOLDOUT else ("test",)


def _load(site: SiteSettings, task: Task, splits: tuple[str, ...]) -> SiteArrays:
    return load_npz_splits(site.data.path, task, splits)


def _error_reply(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


class LayoutMismatchError(ConsortiaError):
    """The server's model is not the one this site builds from the same settings."""


def _model_from(msg: Message) -> tuple[torch.nn.Module, WeightLayout, int]:
    """Build the model from the server's settings and load the global weights into it."""
    config = msg.content[rk.CONFIG_KEY]
    settings = ModelSettings(**json.loads(str(config[rk.CFG_MODEL_SETTINGS])))
    model = build_model(settings)
    layout = WeightLayout.of(model.state_dict())
    if layout.fingerprint() != str(config[rk.CFG_LAYOUT_FINGERPRINT]):
        raise LayoutMismatchError(
            "the server's model layout differs from this site's build of the same settings "
            "(different Consortia/MONAI versions?)"
        )
    vector = msg.content[rk.ARRAYS_KEY][rk.WEIGHTS_ARRAY].numpy()
    model.load_state_dict(layout.unflatten(vector), strict=True)
    return model, layout, settings.out_channels


def _eval_records(result_sums: dict[str, float], histograms: dict[str, list[float]]) -> RecordDict:
    content = RecordDict({rk.EVAL_METRICS_KEY: MetricRecord(dict(result_sums))})
    if histograms:
        content[rk.EVAL_HIST_KEY] = MetricRecord(dict(histograms))
    return content


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Describe the site: name, role and example counts for the run's task."""
    task = Task(str(msg.content[rk.CONFIG_KEY][rk.CFG_TASK]))
    try:
        site = _site(context)
        num_train = len(_load(site, task, ("train",))) if site.site.role is Role.TRAIN else 0
        num_eval = len(_load(site, task, _eval_splits(site)))
        fingerprint = data_fingerprint(site.data.path)
    except ConsortiaError as err:
        logger.error("site data check failed: %s", err)
        return _error_reply(msg, ERROR_SITE_DATA, f"site data unusable for {task}; see node log")
    info = ConfigRecord(
        {
            rk.SITE_NAME: site.site.name,
            rk.SITE_ROLE: site.site.role.value,
            rk.SITE_TASK: task.value,
            rk.SITE_NUM_TRAIN: num_train,
            rk.SITE_NUM_EVAL: num_eval,
            rk.SITE_DATA_FINGERPRINT: fingerprint,
        }
    )
    return Message(RecordDict({rk.INFO_KEY: info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Evaluate the incoming global model (if asked), then train it on local data."""
    site = _site(context)
    if site.site.role is not Role.TRAIN:
        return _error_reply(msg, ERROR_REFUSED, f"site {site.site.name} is a held-out site")
    config = msg.content[rk.CONFIG_KEY]
    task = Task(str(config[rk.CFG_TASK]))
    round_number = int(config[rk.CFG_ROUND])
    device = select_device()
    try:
        train_data = _load(site, task, ("train",))
        eval_data = _load(site, task, _eval_splits(site)) if config[rk.CFG_EVALUATE_FIRST] else None
    except ConsortiaError as err:
        logger.error("site data unusable: %s", err)
        return _error_reply(msg, ERROR_SITE_DATA, f"site data unusable for {task}; see node log")
    model, layout, num_classes = _model_from(msg)
    batch_size = int(config[rk.CFG_BATCH_SIZE])
    content = RecordDict()
    eval_s = 0.0
    if eval_data is not None:
        evaluated = evaluate_local(
            model, eval_data, task, num_classes=num_classes, batch_size=batch_size,
            device=device, surface_distances=bool(config[rk.CFG_SURFACE_METRICS]),
        )
        content = _eval_records(evaluated.sums, evaluated.histograms)
        eval_s = evaluated.compute_s
    seed = int(config[rk.CFG_SEED]) * 1_000_003 + round_number * 7919 + zlib.crc32(
        site.site.name.encode()
    )
    started = time.perf_counter()
    result = train_local(
        model,
        train_data,
        task,
        epochs=int(config[rk.CFG_LOCAL_EPOCHS]),
        batch_size=batch_size,
        learning_rate=float(config[rk.CFG_LEARNING_RATE]),
        seed=seed % (2**31),
        device=device,
    )
    logger.info(
        "round %d: trained on %d examples in %.1f s (loss %.4f)",
        round_number,
        result.num_examples,
        time.perf_counter() - started,
        result.mean_loss,
    )
    weights = layout.flatten(model.cpu().state_dict())
    content[rk.ARRAYS_KEY] = ArrayRecord({rk.WEIGHTS_ARRAY: Array(weights)})
    content[rk.TRAIN_METRICS_KEY] = MetricRecord(
        {
            rk.M_NUM_EXAMPLES: result.num_examples,
            rk.M_TRAIN_LOSS: result.mean_loss,
            rk.M_COMPUTE_S: result.compute_s + eval_s,
            rk.M_EVAL_S: eval_s,
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metric sums and counts of the global model on the site's evaluation cases."""
    site = _site(context)
    config = msg.content[rk.CONFIG_KEY]
    task = Task(str(config[rk.CFG_TASK]))
    try:
        data = _load(site, task, _eval_splits(site))
    except ConsortiaError as err:
        logger.error("site data unusable: %s", err)
        return _error_reply(msg, ERROR_SITE_DATA, f"site data unusable for {task}; see node log")
    model, _, num_classes = _model_from(msg)
    evaluated = evaluate_local(
        model,
        data,
        task,
        num_classes=num_classes,
        batch_size=int(config[rk.CFG_BATCH_SIZE]),
        device=select_device(),
        surface_distances=bool(config[rk.CFG_SURFACE_METRICS]),
    )
    content = _eval_records(evaluated.sums, evaluated.histograms)
    content[rk.TRAIN_METRICS_KEY] = MetricRecord(
        {rk.M_NUM_EXAMPLES: 0, rk.M_COMPUTE_S: evaluated.compute_s, rk.M_EVAL_S: evaluated.compute_s}
    )
    return Message(content, reply_to=msg)
