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
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from consortia.client.site_data import SiteArrays, data_fingerprint, load_npz_splits
from consortia.client.trainer import EvalResult, evaluate_local, train_local
from consortia.common import records as rk
from consortia.common.device import select_device
from consortia.common.errors import ConsortiaError, DataError
from consortia.common.instructions import Instruction, get_task
from consortia.common.models import build_model
from consortia.common.record_fields import (
    RecordFieldError,
    get_array,
    get_array_record,
    get_config_record,
)
from consortia.common.settings import Role, SiteSettings, Task, load_site_settings
from consortia.common.weights import WeightLayout

__all__ = [
    "ERROR_BAD_MESSAGE",
    "ERROR_REFUSED",
    "ERROR_SITE_DATA",
    "LayoutMismatchError",
    "app",
]

logger = logging.getLogger("consortia.client")

ERROR_SITE_DATA = 4101
ERROR_REFUSED = 4102
ERROR_BAD_MESSAGE = 4103

app = ClientApp()


class LayoutMismatchError(ConsortiaError):
    """The server's model is not the one this site builds from the same settings."""


def _site_config_path(context: Context) -> Path:
    """The site config: from the SuperNode's node config, or, under Flower's simulation
    engine, the run's list of simulated sites indexed by the node's partition id."""
    path = context.node_config.get(rk.NODE_CONFIG_SITE_CONFIG)
    if isinstance(path, str) and path:
        return Path(path)
    partition = context.node_config.get(rk.NODE_CONFIG_PARTITION_ID)
    listed = context.run_config.get(rk.RUN_CONFIG_SIMULATION_SITES)
    if partition is not None and isinstance(listed, str) and listed:
        sites = json.loads(listed)
        index = int(partition)
        if not 0 <= index < len(sites):
            raise ConsortiaError(f"simulated node {index} has no site ({len(sites)} listed)")
        return Path(sites[index])
    raise ConsortiaError(f"node config has no '{rk.NODE_CONFIG_SITE_CONFIG}'")


def _site(context: Context) -> SiteSettings:
    return load_site_settings(_site_config_path(context))


def _eval_splits(site: SiteSettings) -> tuple[str, ...]:
    # A held-out site never trained on anything: all of its cases are test cases.
    return ("train", "val", "test") if site.site.role is Role.HOLDOUT else ("test",)


def _load(site: SiteSettings, task: Task, splits: tuple[str, ...]) -> SiteArrays:
    return load_npz_splits(site.data.path, task, splits)


def _refuse(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def _model(msg: Message, instruction: Instruction) -> tuple[torch.nn.Module, WeightLayout]:
    """Build the model from the server's settings and load the global weights into it."""
    model = build_model(instruction.model)
    layout = WeightLayout.of(model.state_dict())
    if layout.fingerprint() != instruction.layout_fingerprint:
        raise LayoutMismatchError(
            "the server's model layout differs from this site's build of the same settings "
            "(different Consortia/MONAI versions?)"
        )
    vector = get_array(get_array_record(msg.content, rk.ARRAYS_KEY), rk.WEIGHTS_ARRAY)
    model.load_state_dict(layout.unflatten(vector), strict=True)
    return model, layout


def _evaluate(
    model: torch.nn.Module, data: SiteArrays, instruction: Instruction, device: torch.device
) -> EvalResult:
    return evaluate_local(
        model,
        data,
        instruction.task,
        num_classes=instruction.model.out_channels,
        batch_size=instruction.batch_size,
        device=device,
        surface_distances=instruction.surface_metrics,
    )


def _eval_records(content: RecordDict, result: EvalResult) -> None:
    content[rk.EVAL_METRICS_KEY] = MetricRecord(dict(result.sums))
    if result.histograms:
        content[rk.EVAL_HIST_KEY] = MetricRecord(dict(result.histograms))


def _guarded(handler_name: str, msg: Message, context: Context) -> Message:
    """Run a handler; data problems and malformed messages become clear error replies."""
    try:
        site = _site(context)
        if handler_name == "query":
            return _query(msg, site)
        instruction = Instruction.from_config(get_config_record(msg.content, rk.CONFIG_KEY))
        if handler_name == "train":
            return _train(msg, site, instruction)
        return _evaluate_handler(msg, site, instruction)
    except DataError as err:
        logger.error("site data unusable: %s", err)
        return _refuse(msg, ERROR_SITE_DATA, "site data unusable for this task; see node log")
    except (RecordFieldError, LayoutMismatchError) as err:
        logger.error("malformed %s message: %s", handler_name, err)
        return _refuse(msg, ERROR_BAD_MESSAGE, f"malformed {handler_name} message: {err}")


def _query(msg: Message, site: SiteSettings) -> Message:
    task = get_task(get_config_record(msg.content, rk.CONFIG_KEY))
    num_train = len(_load(site, task, ("train",))) if site.site.role is Role.TRAIN else 0
    num_eval = len(_load(site, task, _eval_splits(site)))
    info = ConfigRecord(
        {
            rk.SITE_NAME: site.site.name,
            rk.SITE_ROLE: site.site.role.value,
            rk.SITE_TASK: task.value,
            rk.SITE_NUM_TRAIN: num_train,
            rk.SITE_NUM_EVAL: num_eval,
            rk.SITE_DATA_FINGERPRINT: data_fingerprint(site.data.path),
        }
    )
    return Message(RecordDict({rk.INFO_KEY: info}), reply_to=msg)


def _train(msg: Message, site: SiteSettings, instruction: Instruction) -> Message:
    if site.site.role is not Role.TRAIN:
        return _refuse(msg, ERROR_REFUSED, f"site {site.site.name} is a held-out site")
    started = time.perf_counter()
    device = select_device()
    train_data = _load(site, instruction.task, ("train",))
    model, layout = _model(msg, instruction)
    content = RecordDict()
    eval_s = 0.0
    if instruction.evaluate_first:
        evaluated = _evaluate(
            model, _load(site, instruction.task, _eval_splits(site)), instruction, device
        )
        _eval_records(content, evaluated)
        eval_s = evaluated.compute_s
    seed = (
        instruction.seed * 1_000_003
        + instruction.round * 7919
        + zlib.crc32(site.site.name.encode())
    ) % (2**31)
    prepared_s = time.perf_counter() - started - eval_s
    result = train_local(
        model,
        train_data,
        instruction.task,
        epochs=instruction.local_epochs,
        batch_size=instruction.batch_size,
        learning_rate=instruction.learning_rate,
        seed=seed,
        device=device,
    )
    logger.info(
        "round %d: trained on %d examples in %.2f s, evaluated in %.2f s, prepared in "
        "%.2f s, handler %.2f s (loss %.4f)",
        instruction.round,
        result.num_examples,
        result.compute_s,
        eval_s,
        prepared_s,
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


def _evaluate_handler(msg: Message, site: SiteSettings, instruction: Instruction) -> Message:
    data = _load(site, instruction.task, _eval_splits(site))
    model, _ = _model(msg, instruction)
    evaluated = _evaluate(model, data, instruction, select_device())
    content = RecordDict()
    _eval_records(content, evaluated)
    content[rk.TRAIN_METRICS_KEY] = MetricRecord(
        {
            rk.M_NUM_EXAMPLES: 0,
            rk.M_COMPUTE_S: evaluated.compute_s,
            rk.M_EVAL_S: evaluated.compute_s,
        }
    )
    return Message(content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Describe the site: name, role and example counts for the run's task."""
    return _guarded("query", msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Evaluate the incoming global model (if asked), then train it on local data."""
    return _guarded("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metric sums and counts of the global model on the site's evaluation cases."""
    return _guarded("evaluate", msg, context)
