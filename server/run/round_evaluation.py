"""The global model's evaluation in one wave: per site, pooled over held-out sites and
over training sites (and, for the final model, bootstrap confidence intervals), written
into the round's entry of results.json."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flwr.app import Message

from consortia.common.config.settings import Role, Task
from consortia.common.metrics.bootstrap import REPLICATES
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import (
    RecordFieldError,
    get_metric_record,
    metric_floats,
    metric_lists,
)
from consortia.server.exchange.sites import Site
from consortia.server.run.evaluation import (
    SiteEvaluation,
    metric_intervals,
    pooled_metrics,
    site_metrics,
)
from consortia.server.run.folder import RunFolder
from consortia.server.run.record import HOLDOUT, TRAINING_SITES

__all__ = ["record_evaluation"]

logger = logging.getLogger("consortia.server")


def _replicates(reply: Message, name: str) -> dict[str, list[float]]:
    """A site's bootstrap replicates, or none when it sent malformed ones."""
    if rk.EVAL_BOOTSTRAP_KEY not in reply.content:
        return {}
    replicates = metric_lists(get_metric_record(reply.content, rk.EVAL_BOOTSTRAP_KEY))
    if any(len(values) != REPLICATES for values in replicates.values()):
        logger.warning("bootstrap replicates of %s ignored: not %d per metric", name, REPLICATES)
        return {}
    return replicates


def _read_reply(reply: Message, name: str) -> SiteEvaluation:
    sums = metric_floats(get_metric_record(reply.content, rk.EVAL_METRICS_KEY))
    hists: dict[str, list[float]] = {}
    if rk.EVAL_HIST_KEY in reply.content:
        hists = metric_lists(get_metric_record(reply.content, rk.EVAL_HIST_KEY))
    return SiteEvaluation(sums, hists, _replicates(reply, name))


def record_evaluation(
    folder: RunFolder,
    task: Task,
    sites: Mapping[int, Site],
    model_round: int,
    replies: Mapping[int, Message],
    *,
    intervals: bool = False,
) -> None:
    """Record the evaluation of the model after `model_round` from the wave's replies;
    with `intervals` (the final model), also bootstrap confidence intervals."""
    per_site: dict[str, dict[str, float]] = {}
    evaluations: dict[str, SiteEvaluation] = {}
    for node_id, reply in replies.items():
        if reply.has_error() or rk.EVAL_METRICS_KEY not in reply.content or node_id not in sites:
            continue
        name = sites[node_id].name
        try:
            evaluation = _read_reply(reply, name)
        except RecordFieldError as err:
            logger.warning("evaluation of %s ignored: %s", name, err)
            continue
        evaluations[name] = evaluation
        per_site[name] = site_metrics(task, evaluation.sums, evaluation.histograms)
    roles = {site.name: site.role for site in sites.values()}
    groups = {
        HOLDOUT: [name for name in evaluations if roles[name] is Role.HOLDOUT],
        TRAINING_SITES: [name for name in evaluations if roles[name] is Role.TRAIN],
    }
    entry: dict[str, object] = {"sites": per_site}
    for group, names in groups.items():
        summaries = [evaluations[name].summary for name in names]
        entry[group] = pooled_metrics(task, summaries) if summaries else None
    if intervals and evaluations:
        try:
            entry["intervals"] = metric_intervals(task, evaluations, groups)
        except (KeyError, ValueError) as err:  # a site's counts that do not resample
            logger.warning("no confidence intervals for model %d: %s", model_round, err)
    folder.update_round(model_round, evaluation=entry)
    for group in groups:
        pooled = entry[group]
        if isinstance(pooled, dict):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in pooled.items() if k != "cases")
            logger.info("model after round %d, %s: %s", model_round, group, shown)
    folder.event("evaluated", round=model_round, holdout=entry[HOLDOUT], sites=per_site)
