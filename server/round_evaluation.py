"""The global model's evaluation in one wave: per site, pooled over held-out sites and
over training sites, written into the round's entry of results.json."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flwr.app import Message

from consortia.common import records as rk
from consortia.common.record_fields import (
    RecordFieldError,
    get_metric_record,
    metric_floats,
    metric_lists,
)
from consortia.common.settings import Role, Task
from consortia.server.evaluation import pooled_metrics, site_metrics
from consortia.server.run_folder import RunFolder
from consortia.server.sites import Site

__all__ = ["record_evaluation"]

logger = logging.getLogger("consortia.server")


def record_evaluation(
    folder: RunFolder,
    task: Task,
    sites: Mapping[int, Site],
    model_round: int,
    replies: Mapping[int, Message],
) -> None:
    """Record the evaluation of the model after `model_round` from the wave's replies."""
    per_site: dict[str, dict[str, float]] = {}
    summaries: dict[str, tuple[dict[str, float], dict[str, list[float]]]] = {}
    for node_id, reply in replies.items():
        if reply.has_error() or rk.EVAL_METRICS_KEY not in reply.content or node_id not in sites:
            continue
        name = sites[node_id].name
        try:
            sums = metric_floats(get_metric_record(reply.content, rk.EVAL_METRICS_KEY))
            hists: dict[str, list[float]] = {}
            if rk.EVAL_HIST_KEY in reply.content:
                hists = metric_lists(get_metric_record(reply.content, rk.EVAL_HIST_KEY))
        except RecordFieldError as err:
            logger.warning("evaluation of %s ignored: %s", name, err)
            continue
        summaries[name] = (sums, hists)
        per_site[name] = site_metrics(task, sums, hists)
    roles = {site.name: site.role for site in sites.values()}
    holdout = [summaries[n] for n in summaries if roles[n] is Role.HOLDOUT]
    training = [summaries[n] for n in summaries if roles[n] is Role.TRAIN]
    evaluation = {
        "sites": per_site,
        "holdout": pooled_metrics(task, holdout) if holdout else None,
        "training_sites": pooled_metrics(task, training) if training else None,
    }
    folder.update_round(model_round, evaluation=evaluation)
    for scope in ("holdout", "training_sites"):
        pooled = evaluation[scope]
        if isinstance(pooled, dict):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in pooled.items() if k != "cases")
            logger.info("model after round %d, %s: %s", model_round, scope, shown)
    folder.event("evaluated", round=model_round, holdout=evaluation["holdout"], sites=per_site)
