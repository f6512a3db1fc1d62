"""What does a site's epsilon buy? The held-out metric of the same study trained with
DP-SGD at several privacy targets (and without DP), from scratch or from a warm start.

Every site trains with the node's own DP code (`consortia.client.privacy.dp_training`:
Poisson sampling, the fused clipping engine, Opacus' noise and accountant, the
`[run.privacy.recipe]` options) and the noise multiplier its privacy gate would choose
(`poisson_plan` and `noise_for_target` over the study's rounds, as
`consortia.client.privacy.budget.plan_round` does); the server's FedAvg is simulated in
one process (weighted by example counts), as in `tests.benchmarks.learning`. The final
model's held-out metric comes with a 95% percentile bootstrap interval over held-out
cases (`consortia.common.metrics.bootstrap`). Epsilon ``inf`` trains without DP.

Studies: ``demo`` (the synthetic data of `consortia demo`, its DP run settings),
``hippocampus`` and ``pneumoniamnist`` (the shared real data, configs/real/). ``--init
PATH`` starts every setting from a plain state-dict checkpoint (a warm start)::

    python -m tests.benchmarks.privacy_utility --study demo --epsilons 1,3,8,inf \\
        --out docs/benchmarks/privacy_utility-demo-2026-12-07.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from consortia.client.privacy.dp_training import DPRound, train_local_dp
from consortia.client.training.trainer import RoundRecipe, evaluate_local, train_local
from consortia.common.config.settings import RunSettings, Task, load_run_settings
from consortia.common.metrics.bootstrap import (
    classification_replicates,
    percentile_interval,
    pooled_ratios,
)
from consortia.common.metrics.exact import finalize_classification, finalize_segmentation
from consortia.common.networks.models import build_model
from consortia.common.privacy.accounting import noise_for_target, poisson_plan
from tests.benchmarks.learning import STUDIES, Study, load_study

__all__ = ["dp_federated", "held_out", "main", "table"]

logger = logging.getLogger("consortia.benchmarks.privacy_utility")

DELTA = 1e-5


def _demo_settings() -> RunSettings:
    from consortia.server.launch.demo import DemoOptions, demo_run_settings

    return demo_run_settings(DemoOptions(dp=True), "demo")


def _metric(task: Task) -> str:
    return "dice" if task is Task.SEGMENTATION else "auc"


def held_out(model: nn.Module, study: Study, *, interval: bool) -> dict[str, Any]:
    """The held-out site's metrics; with `interval`, the headline metric's 95% bootstrap
    interval over its cases."""
    s = study.settings
    result = evaluate_local(
        model,
        study.holdout,
        s.task,
        num_classes=s.model.out_channels,
        batch_size=64,
        device=torch.device("cpu"),
        surface_distances=False,
        bootstrap=interval,
    )
    metric = _metric(s.task)
    if s.task is Task.SEGMENTATION:
        metrics: dict[str, Any] = dict(finalize_segmentation(result.sums))
        replicates = pooled_ratios([result.bootstrap], metric) if interval else None
    else:
        metrics = dict(finalize_classification(result.sums, result.histograms))
        sample = [(result.sums, result.histograms)]
        replicates = classification_replicates(sample)[metric] if interval else None
    if replicates is not None:
        metrics[f"{metric}_ci95"] = percentile_interval(replicates)
    return metrics


def _vector(model: nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().float().reshape(-1) for v in model.state_dict().values()])


def _load_vector(model: nn.Module, vector: torch.Tensor) -> None:
    state, offset = model.state_dict(), 0
    for key, value in state.items():
        state[key] = vector[offset : offset + value.numel()].reshape(value.shape).to(value.dtype)
        offset += value.numel()
    model.load_state_dict(state)


def _model(settings: RunSettings, init: Path | None) -> nn.Module:
    torch.manual_seed(settings.seed)
    model = build_model(settings.model.to_model_settings())
    if init is not None:
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    return model


def _sigmas(study: Study, epsilon: float) -> dict[str, float]:
    """Each site's noise multiplier for `epsilon` over the study (the node's choice)."""
    s = study.settings
    batch = s.privacy.recipe.logical_batch_size(s.training.batch_size)
    sigmas = {}
    for name, data in study.sites.items():
        plan = poisson_plan(len(data), batch)
        steps = plan.steps(s.training.local_epochs) * s.rounds
        sigmas[name] = noise_for_target(epsilon, DELTA, plan.sample_rate, steps, "rdp")
    return sigmas


def _site_round(
    model: nn.Module, study: Study, name: str, round_number: int, sigma: float | None
) -> int:
    """One site's local training of one round (DP-SGD when `sigma` is given)."""
    s, data = study.settings, study.sites[name]
    plan = RoundRecipe.for_round(s.training, round_number, s.rounds)
    common: dict[str, Any] = {
        "epochs": s.training.local_epochs,
        "batch_size": s.training.batch_size,
        "learning_rate": s.training.learning_rate,
        "device": torch.device("cpu"),
        "recipe": plan,
    }
    if sigma is None:
        seed = s.seed * 1_000_003 + round_number * 7919 + len(name)
        return train_local(model, data, s.task, seed=seed, **common).num_examples
    dp = DPRound(sigma, s.privacy.max_grad_norm, DELTA, "rdp", recipe=s.privacy.recipe)
    result, _ = train_local_dp(model, data, s.task, dp=dp, **common)
    return result.num_examples


def dp_federated(study: Study, epsilon: float, init: Path | None) -> dict[str, Any]:
    """FedAvg over the training sites at `epsilon` (``inf``: no DP); the held-out metric
    after every round and the final model's interval."""
    s = study.settings
    model = _model(s, init)
    sigmas = _sigmas(study, epsilon) if math.isfinite(epsilon) else {}
    curve: list[float] = []
    start = time.perf_counter()
    for round_number in range(1, s.rounds + 1):
        total, examples = torch.zeros_like(_vector(model)), 0
        for name in study.sites:
            local = copy.deepcopy(model)
            count = _site_round(local, study, name, round_number, sigmas.get(name))
            total += _vector(local) * count
            examples += count
        _load_vector(model, total / examples)
        curve.append(float(held_out(model, study, interval=False)[_metric(s.task)]))
        logger.info("epsilon %s round %d: %.4f", epsilon, round_number, curve[-1])
    wall = time.perf_counter() - start
    final = held_out(model, study, interval=True)
    return {"epsilon": epsilon, "sigmas": sigmas, "curve": curve, "final": final, "wall_s": wall}


def table(results: dict[str, Any]) -> str:
    """The markdown rows of docs/performance.md and docs/privacy.md for one JSON."""
    metric = results["metric"]
    rows = [
        f"| epsilon | start | sigma (per site) | held-out {metric} [95% CI] | per round | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        final = run["final"]
        interval = final.get(f"{metric}_ci95") or (math.nan, math.nan)
        sigmas = ", ".join(f"{v:.2f}" for v in run["sigmas"].values()) or "no DP"
        curve = ", ".join(f"{v:.3f}" for v in run["curve"])
        rows.append(
            f"| {run['epsilon']:g} | {run['start']} | {sigmas} | {final[metric]:.3f} "
            f"[{interval[0]:.3f}, {interval[1]:.3f}] | {curve} | {run['wall_s']:.0f} |"
        )
    return "\n".join(rows)


def _settings(args: argparse.Namespace) -> RunSettings:
    config = _demo_settings() if args.study == "demo" else load_run_settings(STUDIES[args.study][0])
    data = config.model_dump()
    data["privacy"] = {**data["privacy"], "enabled": True}
    data["privacy"]["recipe"] = {**data["privacy"]["recipe"], **json.loads(args.recipe)}
    data["training"] = {**data["training"], **json.loads(args.training)}
    if args.rounds:
        data["rounds"] = args.rounds
    return RunSettings.model_validate(data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=[*sorted(STUDIES), "demo"], default="demo")
    parser.add_argument("--epsilons", default="1,3,8,inf")
    parser.add_argument("--init", type=Path, help="a plain state-dict checkpoint (warm start)")
    parser.add_argument("--rounds", type=int, default=0, help="override [run] rounds")
    parser.add_argument("--recipe", default="{}", help="[run.privacy.recipe] overrides, JSON")
    parser.add_argument("--training", default="{}", help="[run.training] overrides, JSON")
    parser.add_argument("--cache", type=Path, default=Path(".benchmark-cache"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    settings = _settings(args)
    study = load_study(args.study, args.cache, settings)
    study = Study(settings, study.sites, study.holdout, study.spacing)  # DP stays on
    runs = []
    for text in args.epsilons.split(","):
        run = dp_federated(study, float(text), args.init)
        run["start"] = f"warm ({args.init.name})" if args.init else "scratch"
        runs.append(run)
    results = {
        "benchmark": "privacy_utility",
        "study": args.study,
        "metric": _metric(settings.task),
        "delta": DELTA,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "settings": json.loads(settings.to_json()),
        "init": str(args.init) if args.init else None,
        "sites": {name: len(data) for name, data in study.sites.items()},
        "holdout_cases": len(study.holdout),
        "runs": runs,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=_plain) + "\n")
    logger.info("\n%s", table(results))
    return 0


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
