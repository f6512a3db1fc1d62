"""The site's Flower ClientApp (Message API): answers `query`, `train` and `evaluate`.

Only model weights, example counts and metric sums/counts leave the site. Problems with
the site's data are logged here in full and reported to the server without file names.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
import time
import zlib

import numpy as np
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

from consortia.client.data.dataset import SiteDataset
from consortia.client.data.site_data import SiteArrays
from consortia.client.mods.approval import approval_mod
from consortia.client.mods.error import error_mod
from consortia.client.mods.signing import signing_mod
from consortia.client.node.audit import node_audit_for
from consortia.client.privacy.budget import (
    PrivacyRefusedError,
    open_ledger,
    plan_round,
    record_round,
    round_request,
)
from consortia.client.privacy.dp_training import DPSpend, train_local_dp
from consortia.client.privacy.evaluation_allowance import (
    EvaluationAllowance,
    EvaluationGrant,
    EvaluationRefusedError,
)
from consortia.client.release_cache import (
    RELEASES_DIR,
    Release,
    ReleaseCache,
    ReleaseCacheError,
    kept_release,
    model_sha256,
)
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
from consortia.common.audit.log import PRIVACY_SPENT
from consortia.common.config.settings import Role, SiteSettings, run_settings_from_json
from consortia.common.errors import ConfigError, ConsortiaError, DataError
from consortia.common.networks.device import select_device
from consortia.common.networks.models import build_model
from consortia.common.networks.weights import WeightLayout
from consortia.common.privacy.ledger import LedgerError, PrivacyLedger, ledger_lock, ledger_path
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
from consortia.common.wire.records import (
    ERROR_BAD_MESSAGE,
    ERROR_PRIVACY_BUDGET,
    ERROR_REFUSED,
    ERROR_SECAGG,
    ERROR_SITE_DATA,
)
from consortia.common.wire.run_identity import config_hash

__all__ = ["LayoutMismatchError", "app"]

logger = logging.getLogger("consortia.client")

# Outermost first: keep any uncaught exception's text at the site, refuse unapproved
# runs before anything runs, sign what is returned.
app = ClientApp(mods=[error_mod, approval_mod, signing_mod])


SECAGG_STAGES = {
    rk.ACTION_SECAGG_KEYS: secagg_keys,
    rk.ACTION_SECAGG_UNMASK: secagg_unmask,
}


class LayoutMismatchError(ConsortiaError):
    """The server's model is not the one this site builds from the same settings."""


def _eval_splits(site: SiteSettings) -> tuple[str, ...]:
    # A held-out site never trained on anything: all of its cases are test cases.
    return ("train", "val", "test") if site.site.role is Role.HOLDOUT else ("test",)


def _dataset(site: SiteSettings, name: str) -> SiteDataset:
    """The registered data set a message asks for, with the node's array cache."""
    return SiteDataset.open(site.dataset(name).path, cache_dir=site.cache_dir)


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


def _study_hash(context: Context) -> str:
    """The config hash of the approved study the message belongs to."""
    return config_hash(run_settings_from_json(str(context.run_config[rk.RUN_CONFIG_SETTINGS])))


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


def _guarded(handler_name: str, msg: Message, context: Context) -> Message:
    """Run a handler; data problems and malformed messages become clear error replies."""
    try:
        site = site_settings(context)
        if handler_name == "query":
            return _query(msg, site)
        if handler_name in SECAGG_STAGES:
            return SECAGG_STAGES[handler_name](msg, context)
        instruction = Instruction.from_config(get_config_record(msg.content, rk.CONFIG_KEY))
        if handler_name == "train":
            return _train(msg, context, site, instruction)
        return _evaluate_handler(msg, context, site, instruction)
    except EvaluationRefusedError as err:
        logger.warning("evaluation refused: %s", err)
        return _refuse(msg, ERROR_REFUSED, str(err))
    except ReleaseCacheError as err:
        logger.error("round refused: %s", err)
        return _refuse(msg, ERROR_REFUSED, str(err))
    except SecAggError as err:
        logger.error("secure aggregation: %s", err)
        return _refuse(msg, ERROR_SECAGG, f"secure aggregation: {err}")
    except (DataError, ConfigError) as err:
        logger.error("site data unusable: %s", err)
        return _refuse(msg, ERROR_SITE_DATA, "site data unusable for this task; see node log")
    except (RecordFieldError, LayoutMismatchError) as err:
        logger.error("malformed %s message: %s", handler_name, err)
        return _refuse(msg, ERROR_BAD_MESSAGE, f"malformed {handler_name} message: {err}")
    except PrivacyRefusedError as err:
        logger.warning("round refused by the site's privacy policy: %s", err)
        return _refuse(msg, ERROR_PRIVACY_BUDGET, str(err))
    except LedgerError as err:
        logger.error("privacy ledger unusable, refusing to train: %s", err)
        return _refuse(
            msg, ERROR_PRIVACY_BUDGET, "the site's privacy ledger is unusable; see node log"
        )


def _query(msg: Message, site: SiteSettings) -> Message:
    config = get_config_record(msg.content, rk.CONFIG_KEY)
    task = get_task(config)
    dataset = _dataset(site, get_str(config, rk.CFG_DATASET))
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


def _privacy_record(spend: DPSpend, run_epsilon: float) -> ConfigRecord:
    return ConfigRecord(
        {
            rk.P_NOISE_MULTIPLIER: spend.noise_multiplier,
            rk.P_SAMPLE_RATE: spend.sample_rate,
            rk.P_STEPS: spend.steps,
            rk.P_DELTA: spend.delta,
            rk.P_EPSILON: spend.epsilon,
            rk.P_RUN_EPSILON: run_epsilon,
            rk.P_ACCOUNTANT: spend.accountant,
            rk.P_MAX_GRAD_NORM: spend.max_grad_norm,
        }
    )


def _seed(instruction: Instruction, site: SiteSettings) -> int:
    return (
        instruction.seed * 1_000_003
        + instruction.round * 7919
        + zlib.crc32(site.site.name.encode())
    ) % (2**31)


def _update(
    msg: Message,
    context: Context,
    instruction: Instruction,
    weights: np.ndarray,
    num_examples: int,
    opened: SecureRound | None,
    content: RecordDict,
) -> np.ndarray:
    """What the site returns: its weights, or under secure aggregation its weighted
    delta followed by its weight, masked (its encrypted shares go into `content`)."""
    if opened is None:
        return weights
    global_weights = get_array(get_array_record(msg.content, rk.ARRAYS_KEY), rk.WEIGHTS_ARRAY)
    weight = num_examples / instruction.weight_norm
    vector = np.empty(weights.size + 1, dtype=np.float32)
    vector[:-1] = (weights.astype(np.float64) - global_weights) * weight
    vector[-1] = weight
    agreed = hashlib.sha256(np.ascontiguousarray(global_weights).tobytes())
    agreed.update(struct.pack(">d", instruction.weight_norm))
    masked, shares, clipped = mask_update(context, opened, vector, agreed.digest())
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
    msg: Message, context: Context, instruction: Instruction, num_train: int, size: int
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
    opened = open_round(msg, context, instruction.round)
    expected = size + 1  # the weighted delta, then the weight
    if opened.client.config.vector_size != expected:
        raise SecAggError(
            f"the session masks vectors of {opened.client.config.vector_size} values; this "
            f"model's update has {expected}"
        )
    return opened


def _recipe(context: Context, instruction: Instruction) -> RoundRecipe:
    """This round's optimiser and rate, from the approved run settings (the approval mod
    checked their hash and the instruction's base rate), never from a server-sent rate."""
    settings = run_settings_from_json(str(context.run_config[rk.RUN_CONFIG_SETTINGS]))
    return RoundRecipe.for_round(settings.training, instruction.round, instruction.total_rounds)


def _train(msg: Message, context: Context, site: SiteSettings, instruction: Instruction) -> Message:
    if site.site.role is not Role.TRAIN:
        return _refuse(msg, ERROR_REFUSED, f"site {site.site.name} is a held-out site")
    started = time.perf_counter()
    recipe = _recipe(context, instruction)
    device = select_device(site.node.device)
    dataset = _dataset(site, instruction.dataset)
    train_data = dataset.load(instruction.task, ("train",))
    model, layout = _model(msg, instruction)
    opened = _open_secure_round(msg, context, instruction, len(train_data), layout.size)
    request = round_request(instruction, context.run_config)
    fingerprint = dataset.fingerprint
    path = ledger_path(site.ledger_dir, fingerprint)
    content = RecordDict()
    start = model_sha256(get_array(get_array_record(msg.content, rk.ARRAYS_KEY), rk.WEIGHTS_ARRAY))
    releases = ReleaseCache(site.state_path / RELEASES_DIR)
    weights: np.ndarray | None = None
    # The lock spans plan, training and the ledger write: two runs on this data set at
    # once cannot both spend the same remaining budget.
    with ledger_lock(path):
        # cross-checked against the node's audit log: a deleted or cut ledger is refused
        ledger = open_ledger(path, fingerprint, site)
        # A round already in the ledger (the server crashed and resumed) is answered with
        # the update released then: no second training, no second ledger entry.
        kept = kept_release(releases, ledger, request.run_id, request.round, start)
        dp_round = None if kept else plan_round(site.privacy, ledger, request, len(train_data))
        eval_s = 0.0
        if instruction.evaluate_first:
            # the round request already holds the approved study's config hash
            grant = EvaluationAllowance(site.state_path, request.config_hash).grant(
                instruction.round, instruction.total_rounds, start
            )
            evaluated = _evaluate(
                model,
                dataset.load(instruction.task, _eval_splits(site)),
                instruction,
                device,
                grant,
            )
            _eval_records(content, evaluated)
            eval_s = evaluated.compute_s
        prepared_s = time.perf_counter() - started - eval_s
        result: TrainResult
        if kept is not None:
            examples = int(kept.metrics[rk.M_NUM_EXAMPLES])
            result = TrainResult(examples, kept.metrics.get(rk.M_TRAIN_LOSS, math.nan), 0.0)
            weights = kept.weights
            content[rk.PRIVACY_KEY] = ConfigRecord(kept.privacy)
            logger.warning(
                "round %d was trained for this run before the server restarted; sending the "
                "same update again (no new privacy cost)",
                instruction.round,
            )
        elif dp_round is None:
            result = train_local(
                model,
                train_data,
                instruction.task,
                epochs=instruction.local_epochs,
                batch_size=instruction.batch_size,
                learning_rate=instruction.learning_rate,
                seed=_seed(instruction, site),
                device=device,
                proximal_mu=instruction.proximal_mu,
                recipe=recipe,
            )
        else:
            result, spend = train_local_dp(
                model,
                train_data,
                instruction.task,
                epochs=instruction.local_epochs,
                batch_size=instruction.batch_size,
                learning_rate=instruction.learning_rate,
                device=device,
                dp=dp_round,
                proximal_mu=instruction.proximal_mu,
                recipe=recipe,
            )
            entry = record_round(ledger, path, request, spend, result.num_examples)
            content[rk.PRIVACY_KEY] = _privacy_record(spend, entry.run_epsilon)
            weights = layout.flatten(model.cpu().state_dict())
            # No training loss: it is not a DP release (docs/privacy.md).
            metrics = {rk.M_NUM_EXAMPLES: float(result.num_examples)}
            releases.save(
                request.run_id,
                Release(
                    instruction.round,
                    start,
                    weights,
                    metrics,
                    dict(content.config_records[rk.PRIVACY_KEY]),
                ),
            )
            node_audit_for(site).append(
                PRIVACY_SPENT,
                flower_run=msg.metadata.run_id,
                round=instruction.round,
                dataset_fingerprint=fingerprint,
                epsilon=spend.epsilon,
                delta=spend.delta,
                run_epsilon=entry.run_epsilon,
                noise_multiplier=spend.noise_multiplier,
                sample_rate=spend.sample_rate,
                steps=spend.steps,
            )
            logger.info(
                "round %d: DP-SGD sigma %.3f, q %.4f, %d steps; data set epsilon now %.3f "
                "(delta %g, limit %g), this run %.3f",
                instruction.round,
                spend.noise_multiplier,
                spend.sample_rate,
                spend.steps,
                spend.epsilon,
                spend.delta,
                site.privacy.max_epsilon,
                entry.run_epsilon,
            )
        # The ledger's head travels with every train reply; the server records it and the
        # privacy audit checks the ledger still holds it: a ledger cut or deleted later
        # (with the node's audit log) shows there (F9).
        head = ledger.head
        content[rk.LEDGER_HEAD_KEY] = ConfigRecord(
            {rk.LEDGER_HEAD_HASH: head.sha256, rk.LEDGER_HEAD_ENTRIES: head.entries}
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
    if weights is None:
        weights = layout.flatten(model.cpu().state_dict())
    update = _update(msg, context, instruction, weights, result.num_examples, opened, content)
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
    return Message(content, reply_to=msg)


def _evaluate_handler(
    msg: Message, context: Context, site: SiteSettings, instruction: Instruction
) -> Message:
    weights = get_array(get_array_record(msg.content, rk.ARRAYS_KEY), rk.WEIGHTS_ARRAY)
    grant = EvaluationAllowance(site.state_path, _study_hash(context)).grant(
        instruction.round, instruction.total_rounds, model_sha256(weights)
    )
    data = _dataset(site, instruction.dataset).load(instruction.task, _eval_splits(site))
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
    return _guarded("query", msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Evaluate the incoming global model (if asked), then train it on local data."""
    return _guarded("train", msg, context)


@app.train(rk.ACTION_SECAGG_KEYS)
def secagg_keys_stage(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 1: this round's public keys."""
    return _guarded(rk.ACTION_SECAGG_KEYS, msg, context)


@app.train(rk.ACTION_SECAGG_UNMASK)
def secagg_unmask_stage(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 4: shares that remove the masks of the sum."""
    return _guarded(rk.ACTION_SECAGG_UNMASK, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metric sums and counts of the global model on the site's evaluation cases."""
    return _guarded("evaluate", msg, context)
