"""Does the federated model learn? Federated, pooled and local-only training of the same
study, scored on the same held-out site, on the shared real data sets.

Studies (simulated sites of public data; configs/real/, docs/data.md):

- ``hippocampus``: MSD Task04 hippocampus MRI (3D, 3 labels), three training sites and
  the held-out site of ``configs/real/run-hippocampus-no-dp.toml``;
- ``pneumoniamnist``: PneumoniaMNIST (2D, 2 classes),
  ``configs/real/run-pneumoniamnist-no-dp.toml`` (the classification recipe).

Every mode uses the site code (`consortia.client.training.trainer`: the same data loading,
preprocessing, loss, optimiser and learning-rate schedule as a node) in one process:

- ``federated``: the run's ``[run.strategy]`` (the server's own aggregation code: FedAvg,
  FedAvgM, ...) over the training sites' models, weighted by their example counts, round
  by round, the round's rate from the run's schedule (`RoundRecipe.for_round`);
- ``pooled``: every training site's training cases as one site, ``rounds x local_epochs``
  epochs with one optimiser and the same schedule over the whole training;
- ``local``: each training site alone, the same number of epochs.

It is a simulation of the federation's arithmetic, without Flower, TLS or secure
aggregation (which change no weights: tests/test_e2e_*). Writes JSON and logs the
markdown table of docs/performance.md ("Learning")::

    python -m tests.benchmarks.learning --study hippocampus \\
        --out docs/benchmarks/learning-hippocampus-2026-12-07.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from consortia.client.data.dataset import SiteDataset
from consortia.client.data.site_data import SiteArrays
from consortia.client.training.trainer import RoundRecipe, evaluate_local, train_local
from consortia.common.config.lr_schedule import Schedule
from consortia.common.config.settings import RunSettings, Task, load_run_settings
from consortia.common.metrics.exact import finalize_classification, finalize_segmentation
from consortia.common.networks.models import build_model
from consortia.server.aggregation.factory import build_strategy
from consortia.server.aggregation.strategy import SiteUpdate

__all__ = ["STUDIES", "Study", "federated", "load_study", "local_only", "main", "pooled"]

logger = logging.getLogger("consortia.benchmarks.learning")

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "configs" / "real" / "manifests"
STUDIES = {
    "hippocampus": (
        ROOT / "configs" / "real" / "run-hippocampus-no-dp.toml",
        [MANIFESTS / f"hippocampus-{s}.toml" for s in "abc"],
        MANIFESTS / "hippocampus-holdout.toml",
    ),
    "pneumoniamnist": (
        ROOT / "configs" / "real" / "run-pneumoniamnist-no-dp.toml",
        [MANIFESTS / f"pneumoniamnist-{s}.toml" for s in "abc"],
        MANIFESTS / "pneumoniamnist-holdout.toml",
    ),
}
ALL_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Study:
    """A run's settings, its training sites' training splits and the held-out site."""

    settings: RunSettings
    sites: dict[str, SiteArrays]
    holdout: SiteArrays
    spacing: tuple[float, ...] | None = None


def demo_settings() -> RunSettings:
    """The run settings `consortia demo --no-dp` uses."""
    from consortia.server.launch.demo import DemoOptions, default_rounds, demo_run_settings

    options = DemoOptions(dp=False, rounds=default_rounds(Task.SEGMENTATION, dp=False))
    return demo_run_settings(options, "demo")


def _load_demo(cache_dir: Path, settings: RunSettings) -> Study:
    """`consortia demo`'s synthetic sites (0-2 train, 3 held out), generated as it does."""
    import hashlib

    from consortia.client.data.site_data import load_npz_splits
    from consortia.common.demo.data import site_profile, write_site_npz
    from consortia.server.launch.demo import DemoOptions, demo_data_settings

    options = DemoOptions(dp=False, task=settings.task)
    data = demo_data_settings(options)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(options.sites):
        # The file name changes with the generator's settings and the site's profile.
        key = hashlib.sha256(repr((data, site_profile(index))).encode()).hexdigest()[:12]
        path = cache_dir / f"demo-{index}-{key}.npz"
        if not path.is_file():
            write_site_npz(path, index, data)
        paths.append(path)
    sites = {
        f"hospital-{chr(ord('a') + i)}": load_npz_splits(p, settings.task, ("train",))
        for i, p in enumerate(paths[:-1])
    }
    return Study(settings, sites, load_npz_splits(paths[-1], settings.task, ALL_SPLITS))


def load_study(name: str, cache_dir: Path, settings: RunSettings | None = None) -> Study:
    """Read a study's sites as their nodes would (checked, preprocessed, cached)."""
    if name == "demo":
        return _load_demo(cache_dir, settings or demo_settings())
    config, manifests, holdout = STUDIES[name]
    settings = settings or load_run_settings(config)
    if settings.privacy.enabled:
        settings = settings.model_copy(
            update={"privacy": settings.privacy.model_copy(update={"enabled": False})}
        )
    sites = {
        path.stem: SiteDataset.open(path, cache_dir=cache_dir, plan=settings.plan).load(
            settings.task, ("train",)
        )
        for path in manifests
    }
    opened = SiteDataset.open(holdout, cache_dir=cache_dir, plan=settings.plan)
    held = opened.load(settings.task, ALL_SPLITS)
    return Study(settings, sites, held)


def _vector(model: nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().float().reshape(-1) for v in model.state_dict().values()])


def _load_vector(model: nn.Module, vector: torch.Tensor) -> None:
    state, offset = model.state_dict(), 0
    for key, value in state.items():
        n = value.numel()
        state[key] = vector[offset : offset + n].reshape(value.shape).to(value.dtype)
        offset += n
    model.load_state_dict(state)


def evaluate(model: nn.Module, study: Study, *, surface: bool = False) -> dict[str, float]:
    """The held-out site's metrics of `model` (Dice, HD95 in mm; or AUC, balanced accuracy)."""
    s = study.settings
    result = evaluate_local(
        model,
        study.holdout,
        s.task,
        num_classes=s.model.out_channels,
        batch_size=s.training.batch_size,
        device=torch.device("cpu"),
        surface_distances=surface,
    )
    if s.task is Task.SEGMENTATION:
        return finalize_segmentation(result.sums)
    return finalize_classification(result.sums, result.histograms)


def _model(settings: RunSettings) -> nn.Module:
    torch.manual_seed(settings.seed)
    return build_model(settings.model.to_model_settings())


def federated(study: Study, *, every_round: bool = True) -> dict[str, Any]:
    """The run's `[run.strategy]` (the server's own code) over the training sites' models;
    held-out metrics after every round."""
    s = study.settings
    model = _model(s)
    strategy = build_strategy(s.strategy)
    curve: list[float] = []
    start = time.perf_counter()
    for round_number in range(1, s.rounds + 1):
        plan = RoundRecipe.for_round(s.training, round_number, s.rounds, s.plan)
        updates: list[SiteUpdate] = []
        for index, (name, data) in enumerate(study.sites.items()):
            local = copy.deepcopy(model)
            result = train_local(
                local,
                data,
                s.task,
                epochs=s.training.local_epochs,
                batch_size=s.training.batch_size,
                learning_rate=s.training.learning_rate,
                seed=s.seed * 1_000_003 + round_number * 7919 + index,
                device=torch.device("cpu"),
                recipe=plan,
            )
            vector = _vector(local).numpy().astype(np.float32)
            updates.append(SiteUpdate(name, vector, float(result.num_examples)))
        current = _vector(model).numpy().astype(np.float32)
        _load_vector(model, torch.from_numpy(strategy.aggregate(current, updates).weights))
        if every_round or round_number == s.rounds:
            metrics = evaluate(model, study)
            curve.append(_headline(s.task, metrics))
            logger.info("federated round %d: %.4f", round_number, curve[-1])
    wall = time.perf_counter() - start
    return {"curve": curve, "final": evaluate(model, study, surface=True), "wall_s": wall}


def _central(study: Study, data: SiteArrays, label: str) -> dict[str, Any]:
    """One site (or the pooled data) trained for `rounds x local_epochs` epochs, one
    optimiser, the run's schedule over the whole training."""
    s = study.settings
    t = s.training
    epochs = s.rounds * t.local_epochs
    # The whole training is one "round" of the schedule; warm-up keeps its share.
    warmup = 1 if t.warmup_rounds else 0
    schedule = Schedule(t.learning_rate, t.schedule, total_rounds=1, warmup_rounds=warmup)
    plan = replace(RoundRecipe.for_round(t, 1, s.rounds, s.plan), schedule=schedule, round=1)
    model = _model(s)
    start = time.perf_counter()
    train_local(
        model,
        data,
        s.task,
        epochs=epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        seed=s.seed,
        device=torch.device("cpu"),
        recipe=plan,
    )
    wall = time.perf_counter() - start
    final = evaluate(model, study, surface=True)
    logger.info("%s: %.4f", label, _headline(s.task, final))
    return {"final": final, "wall_s": wall, "epochs": epochs}


def pooled(study: Study) -> dict[str, Any]:
    """All training sites' training cases as one site."""
    data = list(study.sites.values())
    joined = SiteArrays(
        np.concatenate([d.images for d in data]),
        np.concatenate([d.targets for d in data]),
        study.settings.plan,
    )
    return _central(study, joined, "pooled")


def local_only(study: Study) -> dict[str, Any]:
    """Each training site alone."""
    return {name: _central(study, data, f"local {name}") for name, data in study.sites.items()}


def _headline(task: Task, metrics: dict[str, float]) -> float:
    return float(metrics["dice"] if task is Task.SEGMENTATION else metrics["auc"])


def _score(final: dict[str, float], metric: str) -> str:
    """A table cell: the metric, and balanced accuracy beside AUC."""
    if metric == "auc":
        return f"{final['auc']:.3f} / {final['balanced_accuracy']:.3f}"
    return f"{final[metric]:.3f}"


def table(results: dict[str, Any]) -> str:
    """The markdown rows of docs/performance.md for one benchmark's JSON."""
    metric = "dice" if results["settings"]["task"] == "segmentation" else "auc"
    label = "auc / balanced accuracy" if metric == "auc" else metric
    rows = [f"| mode | held-out {label} | wall s |", "|---|---|---|"]
    if "federated" in results:
        fed = results["federated"]
        curve = ", ".join(f"{v:.3f}" for v in fed["curve"])
        rows.append(
            f"| federated (per round: {curve}) | {_score(fed['final'], metric)} "
            f"| {fed['wall_s']:.0f} |"
        )
    if "pooled" in results:
        run = results["pooled"]
        rows.append(f"| pooled | {_score(run['final'], metric)} | {run['wall_s']:.0f} |")
    for name, run in results.get("local", {}).items():
        score = _score(run["final"], metric)
        rows.append(f"| local only: {name} | {score} | {run['wall_s']:.0f} |")
    return "\n".join(rows)


def _training_overrides(text: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in text:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=[*sorted(STUDIES), "demo"], default="hippocampus")
    parser.add_argument("--modes", default="federated,pooled,local")
    parser.add_argument("--rounds", type=int, default=0, help="override [run] rounds")
    parser.add_argument(
        "--set", action="append", default=[], help="override a [run.training] key: KEY=VALUE"
    )
    parser.add_argument(
        "--set-plan", action="append", default=[], help="override a [run.plan] key: KEY=VALUE"
    )
    parser.add_argument("--no-plan", action="store_true", help="drop the run's [run.plan]")
    parser.add_argument("--cache", type=Path, default=Path(".benchmark-cache"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = demo_settings() if args.study == "demo" else load_run_settings(STUDIES[args.study][0])
    training = config.training.model_copy(update=_training_overrides(args.set))
    update: dict[str, Any] = {"training": type(training).model_validate(training.model_dump())}
    if args.rounds:
        update["rounds"] = args.rounds
    if args.no_plan:
        update["plan"] = None
    elif args.set_plan and config.plan is not None:
        update["plan"] = config.plan.model_copy(update=_training_overrides(args.set_plan))
    settings = RunSettings.model_validate({**config.model_dump(), **update})
    study = load_study(args.study, args.cache, settings)
    results: dict[str, Any] = {
        "benchmark": "learning",
        "study": args.study,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "settings": json.loads(settings.to_json()),
        "sites": {name: len(data) for name, data in study.sites.items()},
        "holdout_cases": len(study.holdout),
        "simulated_sites": True,
    }
    modes = args.modes.split(",")
    if "federated" in modes:
        results["federated"] = federated(study)
    if "pooled" in modes:
        results["pooled"] = pooled(study)
    if "local" in modes:
        results["local"] = local_only(study)
    text = json.dumps(results, indent=2, default=float)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    logger.info("%s\n%s", text, table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
