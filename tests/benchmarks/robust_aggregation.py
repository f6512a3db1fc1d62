"""Robust aggregation against one malicious site: held-out Dice, rounds and time, side by
side for every attack and strategy, in one run.

Five training sites and one held-out site on synthetic demo data (32x32, 64 training
cases per site, 2D U-Net with channels [8, 16], no DP, plain aggregation), exactly the
federation of tests/e2e/test_attacks.py. Site `site-4` sends its honest update, a
sign-flipped one or a x100 one (`tests/support/attack_app`: a ClientApp mod in the run's FAB;
Consortia's ServerApp and ClientApp are unchanged). For every attack in (none, sign_flip,
scale_100) and strategy in (fedavg, median, trimmed_mean, krum, multi_krum) it runs the
study with the server's norm check off (`[run.validation] outlier_factor = 0`, so the
strategy alone faces the attack), then FedAvg once more with the default check
(`outlier_factor = 10`) for comparison. Per run it records the held-out Dice after
every round, the rounds, the wall time and mean round time, and what happened to the
attacker's updates (rounds in which the strategy used them, rounds rejected by the
norm check, their norm against the honest sites'). Writes JSON::

    python -m tests.benchmarks.robust_aggregation \
        --out docs/benchmarks/robust_aggregation-2026-11-22.json

`--runtime deployment` runs the same matrix on a secured federation (SuperLink and
SuperNodes on 127.0.0.1, TLS, registered keys, signed updates) instead of Flower's
simulation engine: the same numbers, several times slower on a small machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consortia.common.logs import setup_logging
from tests.support.attack_app.app_dir import Attack
from tests.support.attack_app.malicious_client import ATTACKS, NO_ATTACK
from tests.support.attacks import (
    ATTACKER,
    SimulatedFederation,
    final_holdout_dice,
    initial_holdout_dice,
    run_attacked,
    run_config,
    write_sites,
)
from tests.support.cli_federation import CliFederation

__all__ = ["STRATEGIES", "main", "summarise"]

logger = logging.getLogger("consortia.benchmarks")

STRATEGIES = ("fedavg", "median", "trimmed_mean", "krum", "multi_krum")
# FedAvg with the server's default norm check (outlier_factor 10) as an extra column.
CHECKED_FEDAVG = "fedavg+outlier_check"
_DEFAULT_OUTLIER_FACTOR = 10.0

RunFn = Callable[[str, str, Attack], dict[str, Any]]


def _holdout(entry: dict[str, Any]) -> float | None:
    dice = ((entry.get("evaluation") or {}).get("holdout") or {}).get("dice")
    return None if dice is None else float(dice)


def summarise(results: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """One run's line of the report."""
    rounds = [entry for entry in results["rounds"] if entry["round"] >= 1]
    attacker_norms: list[float] = []
    honest_norms: list[float] = []
    kept = rejected = 0
    for entry in rounds:
        for site, train in (entry.get("train") or {}).items():
            norm = train.get("update_norm")
            if norm is not None:
                (attacker_norms if site == ATTACKER else honest_norms).append(float(norm))
        kept += ATTACKER in ((entry.get("strategy") or {}).get("kept") or [])
        rejected += "rejected" in str((entry.get("left_out") or {}).get(ATTACKER, ""))
    return {
        "status": results["status"],
        "holdout_dice": final_holdout_dice(results),
        "holdout_dice_untrained": initial_holdout_dice(results),
        "holdout_dice_per_round": [_holdout(entry) for entry in rounds],
        "rounds": len(rounds),
        "wall_s": round(wall_s, 1),
        "round_s_mean": statistics.mean(float(entry["duration_s"]) for entry in rounds),
        "attacker": {
            "site": ATTACKER,
            "rounds_used_by_strategy": kept,
            "rounds_rejected_by_norm_check": rejected,
            "update_norm_median": statistics.median(attacker_norms) if attacker_norms else None,
            "honest_update_norm_median": statistics.median(honest_norms) if honest_norms else None,
        },
    }


def run_matrix(run: RunFn, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every attack against every strategy (and FedAvg with the norm check)."""
    table: dict[str, dict[str, Any]] = {}
    for kind in ATTACKS:
        attack = Attack(kind, "" if kind == NO_ATTACK else ATTACKER)
        table[kind] = {}
        for strategy in (*STRATEGIES, CHECKED_FEDAVG):
            checked = strategy == CHECKED_FEDAVG
            config = run_config(
                "robust",
                "fedavg" if checked else strategy,
                rounds=args.rounds,
                local_epochs=args.epochs,
                learning_rate=args.lr,
                outlier_factor=_DEFAULT_OUTLIER_FACTOR if checked else 0.0,
            )
            name = f"{kind}-{strategy.replace('+', '-')}"
            started = time.monotonic()
            entry = summarise(run(name, config, attack), time.monotonic() - started)
            table[kind][strategy] = entry
            logger.info("%s / %s: held-out Dice %.3f", kind, strategy, entry["holdout_dice"])
    clean = table[NO_ATTACK]["fedavg"]["holdout_dice"]
    for row in table.values():
        for entry in row.values():
            entry["dice_points_vs_clean_fedavg"] = round(100 * (entry["holdout_dice"] - clean), 2)
    return table


def _run_simulated(scratch: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    write_sites(scratch / "sites", train_cases=args.cases)
    with SimulatedFederation(scratch, scratch / "sites") as federation:
        return run_matrix(lambda name, text, attack: federation.run(name, text, attack), args)


def _run_deployed(scratch: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    federation = CliFederation(scratch)
    try:
        federation.start_server()
        federation.start_nodes(
            write_sites(scratch / "sites", train_cases=args.cases, federation=federation)
        )
        return run_matrix(
            lambda name, text, attack: run_attacked(federation, name, text, attack), args
        )
    finally:
        federation.stop()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=("simulation", "deployment"), default="simulation")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=0.002, help="local learning rate (Adam)")
    parser.add_argument("--cases", type=int, default=64, help="training cases per site")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    args = parser.parse_args(argv)
    setup_logging()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        runner = _run_simulated if args.runtime == "simulation" else _run_deployed
        table = runner(Path(scratch), args)
    report = {
        "benchmark": "robust_aggregation",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "runtime": args.runtime,
        "setup": {
            "training_sites": 5,
            "holdout_sites": 1,
            "attacker": ATTACKER,
            "train_cases_per_site": args.cases,
            "holdout_cases": args.cases + 32,
            "image_size": 32,
            "model": {"architecture": "unet", "channels": [8, 16], "strides": [2]},
            "rounds": args.rounds,
            "local_epochs": args.epochs,
            "learning_rate": args.lr,
            "batch_size": 16,
            "dp": False,
            "secure_aggregation": "off",
            "outlier_factor": f"0, except {CHECKED_FEDAVG}: {_DEFAULT_OUTLIER_FACTOR:g}",
        },
        "results": table,
        "total_wall_s": round(time.monotonic() - started, 1),
    }
    text = json.dumps(report, indent=2)
    if args.out is None:
        sys.stdout.write(text + "\n")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
