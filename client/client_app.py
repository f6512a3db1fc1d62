"""The site's Flower ClientApp (Message API): answers `query`, `train` and `evaluate`.

Only model weights, example counts and metric sums/counts leave the site. The handlers
raise what they refuse (privacy policy, ledger, site data, malformed message, secure
aggregation, evaluation allowance); the refusal mod (`consortia.client.mods.refusal`)
answers each with its error code, logs it in full at the site and reports problems with
the site's data to the server without file names. A train round plans, commits and
resends within the site's `PrivacyBudget`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from consortia.client.data.dataset import SiteDataset
from consortia.client.data.site_data import SiteArrays
from consortia.client.mods.approval import approval_mod
from consortia.client.mods.error import error_mod
from consortia.client.mods.refusal import refusal_mod, refuse
from consortia.client.mods.signing import signing_mod
from consortia.client.privacy.budget import PrivacyBudget, RoundRequest, round_request
from consortia.client.privacy.dp_training import DPRound, train_local_dp
from consortia.client.privacy.evaluation_allowance import EvaluationAllowance, EvaluationGrant
from consortia.client.release_cache import Release, model_sha256
from consortia.client.saliency.release import saliency_record, write_final_saliency
from consortia.client.secure_aggregation.handlers import (
    SecureRound,
    mask_update,
    open_round,
    secagg_keys,
    secagg_unmask,
)
from consortia.client.site_context import site_settings
from consortia.client.training.trainer import (
    EvalResult,
    RoundRecipe,
    TrainResult,
    evaluate_local,
    train_local,
)
from consortia.common.config.settings import (
    Role,
    RunSettings,
    SiteSettings,
    run_settings_from_json,
)
from consortia.common.networks.device import select_device
from consortia.common.networks.models import build_model
from consortia.common.networks.warm_start import check_round_start
from consortia.common.networks.weights import WeightLayout
from consortia.common.privacy.ledger import PrivacyLedger, ledger_path
from consortia.common.secure_aggregation.config import SecAggError
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction, get_task
from consortia.common.wire.record_fields import (
    RecordFieldError,
    get_array,
    get_array_record,
    get_config_record,
    get_str,
)
from consortia.common.wire.records import ERROR_REFUSED
from consortia.common.wire.run_identity import config_hash

__all__ = ["LayoutMismatchError", "app"]

logger = logging.getLogger("consortia.client")

# Outermost first: keep any uncaught exception's text at the site, refuse unapproved
# runs before anything runs, sign what is returned, answer a handler's refusal with its
# error (innermost, where `_guarded` ran before: refusals stay unsigned error replies).
app = ClientApp(mods=[error_mod, approval_mod, signing_mod, refusal_mod])


class LayoutMismatchError(RecordFieldError):
    """The server's model is not the one this site builds from the same settings (a
    malformed message to the refusal mod: refused with `ERROR_BAD_MESSAGE`)."""


def _eval_splits(site: SiteSettings) -> tuple[str, ...]:
    # A held-out site never trained on anything: all of its cases are test cases.
    return ("train", "val", "test") if site.site.role is Role.HOLDOUT else ("test",)


def _dataset(site: SiteSettings, name: str, context: Context) -> SiteDataset:
    """The registered data set a message asks for, with the node's array cache,
    preprocessed by the approved run's `[run.plan]` when it has one."""
    known = rk.RUN_CONFIG_SETTINGS in context.run_config
    plan = _approved_settings(context).plan if known else None
    return SiteDataset.open(site.dataset(name).path, cache_dir=site.cache_dir, plan=plan)


def _instruction(msg: Message) -> Instruction:
    """The server's instructions in a train or evaluate message."""
    return Instruction.from_config(get_config_record(msg.content, rk.CONFIG_KEY))


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


def _study_hash(context: Context) -> str:
    """The config hash of the approved study the message belongs to."""
    return config_hash(_approved_settings(context))


def _evaluate(
    model: torch.nn.Module,
    data: SiteArrays,
    instruction: Instruction,
    device: torch.device,
    grant: EvaluationGrant,
) -> EvalResult:
    return evaluate_local(
        model,
        data,
        instruction.task,
        num_classes=instruction.model.out_channels,
        batch_size=instruction.batch_size,
        device=device,
        surface_distances=instruction.surface_metrics,
        bootstrap=instruction.round > instruction.total_rounds and grant.extras,
    )


def _eval_records(content: RecordDict, result: EvalResult) -> None:
    content[rk.EVAL_METRICS_KEY] = MetricRecord(dict(result.sums))
    if result.histograms:
        content[rk.EVAL_HIST_KEY] = MetricRecord(dict(result.histograms))
    if result.bootstrap:
        content[rk.EVAL_BOOTSTRAP_KEY] = MetricRecord(dict(result.bootstrap))


def _query(msg: Message, site: SiteSettings, context: Context) -> Message:
    config = get_config_record(msg.content, rk.CONFIG_KEY)
    task = get_task(config)
    dataset = _dataset(site, get_str(config, rk.CFG_DATASET), context)
    num_train = dataset.count(task, ("train",)) if site.site.role is Role.TRAIN else 0
    num_eval = dataset.count(task, _eval_splits(site))
    fingerprint = dataset.fingerprint
    ledger = PrivacyLedger.open(
        ledger_path(site.ledger_dir, fingerprint), fingerprint, site.site.name
    )
    entries = ledger.entries
    info = ConfigRecord(
        {
            rk.SITE_NAME: site.site.name,
            rk.SITE_ROLE: site.site.role.value,
            rk.SITE_TASK: task.value,
            rk.SITE_NUM_TRAIN: num_train,
            rk.SITE_NUM_EVAL: num_eval,
            rk.SITE_DATA_FINGERPRINT: fingerprint,
            rk.SITE_MAX_EPSILON: site.privacy.max_epsilon,
            rk.SITE_DELTA: site.privacy.delta,
            rk.SITE_EPSILON_SPENT: entries[-1].epsilon if entries else 0.0,
        }
    )
    return Message(RecordDict({rk.INFO_KEY: info}), reply_to=msg)


def _seed(instruction: Instruction, site: SiteSettings) -> int:
    return (
        instruction.seed * 1_000_003
        + instruction.round * 7919
        + zlib.crc32(site.site.name.encode())
    ) % (2**31)


def _update(
    job: _TrainJob, weights: np.ndarray, num_examples: int, content: RecordDict
) -> np.ndarray:
    """What the site returns: its weights, or under secure aggregation its weighted
    delta followed by its weight, masked (its encrypted shares go into `content`)."""
    if job.opened is None:
        return weights
    instruction = job.instruction
    global_weights = get_array(get_array_record(job.msg.content, rk.ARRAYS_KEY), rk.WEIGHTS_ARRAY)
    weight = num_examples / instruction.weight_norm
    vector = np.empty(weights.size + 1, dtype=np.float32)
    vector[:-1] = (weights.astype(np.float64) - global_weights) * weight
    vector[-1] = weight
    agreed = hashlib.sha256(np.ascontiguousarray(global_weights).tobytes())
    agreed.update(struct.pack(">d", instruction.weight_norm))
    masked, shares, clipped = mask_update(job.context, job.opened, vector, agreed.digest())
    content[rk.SECAGG_KEY] = shares
    if clipped:
        # Kept local: a per-site count would tell the server something about the update.
        logger.warning(
            "round %d: %d update values clipped to the secure-aggregation range",
            instruction.round,
            clipped,
        )
    return masked


def _open_secure_round(
    msg: Message,
    context: Context,
    instruction: Instruction,
    num_train: int,
    size: int,
    settings: RunSettings,
) -> SecureRound | None:
    """Under secure aggregation, check everything masking needs before training (and
    before the privacy ledger): a round that cannot be sent must not spend budget."""
    if not instruction.secure:
        return None
    if not math.isfinite(instruction.weight_norm) or instruction.weight_norm < num_train:
        # A site weighs itself by examples / weight_norm; the norm is the largest count.
        raise RecordFieldError(
            f"'{rk.CFG_WEIGHT_NORM}' {instruction.weight_norm} is not a finite number of at "
            f"least this site's {num_train} training examples"
        )
    opened = open_round(msg, context, instruction.round, settings)
    expected = size + 1  # the weighted delta, then the weight
    if opened.client.config.vector_size != expected:
        raise SecAggError(
            f"the session masks vectors of {opened.client.config.vector_size} values; this "
            f"model's update has {expected}"
        )
    return opened


def _approved_settings(context: Context) -> RunSettings:
    """The approved run settings Flower carries (the approval mod checked their hash)."""
    return run_settings_from_json(str(context.run_config[rk.RUN_CONFIG_SETTINGS]))


@dataclass(frozen=True)
class _TrainJob:
    """A train message at this site, prepared before the privacy ledger is locked."""

    msg: Message
    context: Context
    site: SiteSettings
    instruction: Instruction
    # This round's optimiser and rate, from the approved run settings (the approval mod
    # checked their hash and the instruction's base rate), never from a server-sent rate.
    recipe: RoundRecipe
    request: RoundRequest
    device: torch.device
    dataset: SiteDataset
    train_data: SiteArrays
    model: torch.nn.Module
    layout: WeightLayout
    opened: SecureRound | None
    # SHA-256 of the global model the round starts from
    start: str


def _prepare(
    msg: Message, context: Context, site: SiteSettings, instruction: Instruction
) -> _TrainJob:
    """Everything a train round needs, checked before any budget can be spent."""
    settings = _approved_settings(context)
    global_weights = get_array(get_array_record(msg.content, rk.ARRAYS_KEY), rk.WEIGHTS_ARRAY)
    check_round_start(settings, instruction.round, global_weights)  # the approved warm start
    recipe = RoundRecipe.for_round(
        settings.training, instruction.round, instruction.total_rounds, settings.plan
    )
    device = select_device(site.node.device)
    dataset = _dataset(site, instruction.dataset, context)
    train_data = dataset.load(instruction.task, ("train",))
    model, layout = _model(msg, instruction)
    opened = _open_secure_round(msg, context, instruction, len(train_data), layout.size, settings)
    start = model_sha256(global_weights)
    return _TrainJob(
        msg=msg,
        context=context,
        site=site,
        instruction=instruction,
        recipe=recipe,
        request=round_request(instruction, settings),
        device=device,
        dataset=dataset,
        train_data=train_data,
        model=model,
        layout=layout,
        opened=opened,
        start=start,
    )


def _evaluate_first(job: _TrainJob, content: RecordDict) -> float:
    """Evaluate the incoming global model when the instruction asks; its seconds."""
    instruction = job.instruction
    if not instruction.evaluate_first:
        return 0.0
    # the round request already holds the approved study's config hash
    grant = EvaluationAllowance(job.site.state_path, job.request.config_hash).grant(
        instruction.round, instruction.total_rounds, job.start
    )
    data = job.dataset.load(instruction.task, _eval_splits(job.site))
    evaluated = _evaluate(job.model, data, instruction, job.device, grant)
    _eval_records(content, evaluated)
    return evaluated.compute_s


def _resend(
    kept: Release, content: RecordDict, round_number: int
) -> tuple[TrainResult, np.ndarray]:
    """The update this run released for the round before the server restarted."""
    examples = int(kept.metrics[rk.M_NUM_EXAMPLES])
    result = TrainResult(examples, kept.metrics.get(rk.M_TRAIN_LOSS, math.nan), 0.0)
    content[rk.PRIVACY_KEY] = ConfigRecord(kept.privacy)
    logger.warning(
        "round %d was trained for this run before the server restarted; sending the "
        "same update again (no new privacy cost)",
        round_number,
    )
    return result, kept.weights


def _train_plain(job: _TrainJob) -> tuple[TrainResult, None]:
    """Train without differential privacy (the site's policy allows it)."""
    instruction = job.instruction
    result = train_local(
        job.model,
        job.train_data,
        instruction.task,
        epochs=instruction.local_epochs,
        batch_size=instruction.batch_size,
        learning_rate=instruction.learning_rate,
        seed=_seed(instruction, job.site),
        device=job.device,
        proximal_mu=instruction.proximal_mu,
        recipe=job.recipe,
    )
    return result, None  # the weights are read from the model after the ledger is free


def _train_private(
    job: _TrainJob, budget: PrivacyBudget, dp_round: DPRound, content: RecordDict
) -> tuple[TrainResult, np.ndarray]:
    """Train with DP-SGD and commit the spend before the update can leave."""
    instruction = job.instruction
    result, spend = train_local_dp(
        job.model,
        job.train_data,
        instruction.task,
        epochs=instruction.local_epochs,
        batch_size=instruction.batch_size,
        learning_rate=instruction.learning_rate,
        device=job.device,
        dp=dp_round,
        proximal_mu=instruction.proximal_mu,
        recipe=job.recipe,
    )
    weights = job.layout.flatten(job.model.cpu().state_dict())
    privacy = budget.commit(
        spend, result.num_examples, weights, job.start, flower_run=job.msg.metadata.run_id
    )
    content[rk.PRIVACY_KEY] = privacy
    return result, weights


@dataclass(frozen=True)
class _Trained:
    """What a train round produced, and how long its steps took."""

    result: TrainResult
    # None: read from the model after the ledger is released
    weights: np.ndarray | None
    eval_s: float
    prepared_s: float


def _train_round(job: _TrainJob, content: RecordDict, started: float) -> _Trained:
    """Resend, or train (with DP-SGD when the plan says so). The lock spans plan,
    training and the ledger write: two runs on this data set at once cannot both spend
    the same remaining budget."""
    with PrivacyBudget.locked(job.site, job.dataset.fingerprint, job.request) as budget:
        # A round already in the ledger (the server crashed and resumed) is answered with
        # the update released then: no second training, no second ledger entry.
        kept = budget.kept(job.start)
        dp_round = None if kept else budget.plan(len(job.train_data))
        eval_s = _evaluate_first(job, content)
        prepared_s = time.perf_counter() - started - eval_s
        trained: tuple[TrainResult, np.ndarray | None]
        if kept is not None:
            trained = _resend(kept, content, job.instruction.round)
        elif dp_round is None:
            trained = _train_plain(job)
        else:
            trained = _train_private(job, budget, dp_round, content)
        # The ledger's head travels with every train reply; the server records it and the
        # privacy audit checks the ledger still holds it: a ledger cut or deleted later
        # (with the node's audit log) shows there (F9).
        head = budget.head
        content[rk.LEDGER_HEAD_KEY] = ConfigRecord(
            {rk.LEDGER_HEAD_HASH: head.sha256, rk.LEDGER_HEAD_ENTRIES: head.entries}
        )
    result, weights = trained
    return _Trained(result, weights, eval_s, prepared_s)


def _train_reply(
    job: _TrainJob, content: RecordDict, result: TrainResult, weights: np.ndarray, eval_s: float
) -> Message:
    """The update (masked under secure aggregation) and the round's train metrics."""
    update = _update(job, weights, result.num_examples, content)
    content[rk.ARRAYS_KEY] = ArrayRecord({rk.WEIGHTS_ARRAY: Array(update)})
    train_metrics: dict[str, int | float | list[int] | list[float]] = {
        rk.M_NUM_EXAMPLES: result.num_examples,
        rk.M_COMPUTE_S: result.compute_s + eval_s,
        rk.M_EVAL_S: eval_s,
    }
    if rk.PRIVACY_KEY not in content:
        # Without DP only: the raw batch-mean loss is no DP release (its sensitivity is
        # unbounded), so a DP round does not send it (docs/privacy.md).
        train_metrics[rk.M_TRAIN_LOSS] = result.mean_loss
    content[rk.TRAIN_METRICS_KEY] = MetricRecord(train_metrics)
    return Message(content, reply_to=job.msg)


def _train(msg: Message, context: Context, site: SiteSettings, instruction: Instruction) -> Message:
    """Evaluate the incoming model if asked, then train it (or resend the round's kept
    release), within the site's privacy budget."""
    if site.site.role is not Role.TRAIN:
        return refuse(msg, ERROR_REFUSED, f"site {site.site.name} is a held-out site")
    started = time.perf_counter()
    job = _prepare(msg, context, site, instruction)
    content = RecordDict()
    trained = _train_round(job, content, started)
    result = trained.result
    logger.info(
        "round %d: trained on %d examples in %.2f s, evaluated in %.2f s, prepared in "
        "%.2f s, handler %.2f s (loss %.4f)",
        instruction.round,
        result.num_examples,
        result.compute_s,
        trained.eval_s,
        trained.prepared_s,
        time.perf_counter() - started,
        result.mean_loss,
    )
    weights = trained.weights
    if weights is None:
        weights = job.layout.flatten(job.model.cpu().state_dict())
    return _train_reply(job, content, result, weights, trained.eval_s)


def _evaluate_handler(
    msg: Message, context: Context, site: SiteSettings, instruction: Instruction
) -> Message:
    weights = get_array(get_array_record(msg.content, rk.ARRAYS_KEY), rk.WEIGHTS_ARRAY)
    grant = EvaluationAllowance(site.state_path, _study_hash(context)).grant(
        instruction.round, instruction.total_rounds, model_sha256(weights)
    )
    data = _dataset(site, instruction.dataset, context).load(instruction.task, _eval_splits(site))
    model, _ = _model(msg, instruction)
    device = select_device(site.node.device)
    evaluated = _evaluate(model, data, instruction, device, grant)
    content = RecordDict()
    _eval_records(content, evaluated)
    saliency = write_final_saliency(model, data, instruction, site, device) if grant.extras else []
    if saliency and site.saliency.share:
        content[rk.SALIENCY_KEY] = saliency_record(saliency)
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
    return _query(msg, site_settings(context), context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Evaluate the incoming global model (if asked), then train it on local data."""
    site = site_settings(context)
    return _train(msg, context, site, _instruction(msg))


@app.train(rk.ACTION_SECAGG_KEYS)
def secagg_keys_stage(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 1: this round's public keys."""
    return secagg_keys(msg, context)


@app.train(rk.ACTION_SECAGG_UNMASK)
def secagg_unmask_stage(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 4: shares that remove the masks of the sum."""
    return secagg_unmask(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metric sums and counts of the global model on the site's evaluation cases."""
    site = site_settings(context)
    return _evaluate_handler(msg, context, site, _instruction(msg))
