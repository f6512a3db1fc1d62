"""Round overhead of a real federation: round wall time against the sites' compute time.

Runs the same 4-site federation (SuperLink + 4 SuperNodes on 127.0.0.1, synthetic data,
no held-out site) once per executor mode, side by side:

- ``warm``: Consortia's long-lived executor in Flower's ``process`` isolation mode (torch,
  MONAI and the app imported once; each task a fork of that process);
- ``subprocess``: Flower's default, a fresh ``flwr-clientapp`` process per message.

Per round it records the server's wall time and each site's reported compute time
(training plus the evaluation fused into the train message), and writes JSON::

    python -m tests.benchmarks.round_overhead --out round_overhead.json

overhead = round wall time - slowest site's compute time; overhead_pct = overhead /
slowest compute. The default work per round is sized to take about 10 s per site on a
2-core CPU (4 sites share the cores, so each site's compute includes that contention).

To compare code before and after a change on the same machine and load, give
``--baseline-src TREE`` (a source tree of the earlier code, see ``baseline.py``): each mode
then runs on that tree first and on this one right after; the report holds both
(``baseline`` and ``results``) and their steady-state difference (``change``).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import flwr
import torch
from rich.console import Console

from consortia.common.logs import setup_logging
from consortia.server.launch.demo import DemoOptions, run_demo
from tests.benchmarks.baseline import run_baseline

MODULE = "tests.benchmarks.round_overhead"
STEADY = "steady_state"


def measure(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    options = DemoOptions(
        rounds=args.rounds,
        sites=args.sites,
        holdout_sites=0,
        output=workdir / mode,
        local_epochs=args.local_epochs,
        train_cases=args.cases,
        test_cases=8,
        image_size=args.image_size,
        channels=tuple(args.channels),
        executor=mode,
    )
    started = time.perf_counter()
    run_dir = run_demo(options, Console(file=io.StringIO()))
    total_s = time.perf_counter() - started
    results = json.loads((run_dir / "results.json").read_text())
    rounds = []
    for entry in results["rounds"]:
        if entry["round"] == 0 or "duration_s" not in entry:
            continue
        compute = [site["compute_s"] for site in entry["train"].values()]
        wall = entry["duration_s"]
        slowest = max(compute)
        rounds.append(
            {
                "round": entry["round"],
                "wall_s": round(wall, 3),
                "compute_s_per_site": [round(c, 3) for c in compute],
                "max_compute_s": round(slowest, 3),
                "overhead_s": round(wall - slowest, 3),
                "overhead_pct": round(100 * (wall - slowest) / slowest, 1),
            }
        )
    steady = rounds[1:] or rounds  # round 1 also pays first-message costs
    return {
        "mode": mode,
        "rounds": rounds,
        STEADY: {
            "rounds": [r["round"] for r in steady],
            "mean_wall_s": round(statistics.mean(r["wall_s"] for r in steady), 3),
            "mean_max_compute_s": round(statistics.mean(r["max_compute_s"] for r in steady), 3),
            "mean_overhead_s": round(statistics.mean(r["overhead_s"] for r in steady), 3),
            "mean_overhead_pct": round(statistics.mean(r["overhead_pct"] for r in steady), 1),
        },
        "whole_run_s": round(total_s, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("round_overhead.json"))
    parser.add_argument(
        "--modes", nargs="+", default=["warm", "subprocess"], choices=["warm", "subprocess"]
    )
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cases", type=int, default=400, help="training cases per site")
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--keep", type=Path, help="keep run folders and node logs here")
    parser.add_argument(
        "--baseline-src", type=Path, help="also run each mode on this source tree, just before"
    )
    args = parser.parse_args(argv)
    setup_logging()
    report: dict[str, Any] = {
        "benchmark": "round_overhead",
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": {},
    }
    if args.baseline_src:
        report["baseline_src"] = str(args.baseline_src)
        report["baseline"] = {}
        report["change"] = {}
    with tempfile.TemporaryDirectory(prefix="consortia-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        for mode in args.modes:
            if args.baseline_src:
                before = run_baseline(
                    args.baseline_src, MODULE, _baseline_args(args, mode), "--out"
                )
                report["baseline"][mode] = before["results"][mode]
            report["results"][mode] = measure(mode, args, workdir)
            if args.baseline_src:
                report["change"][mode] = _change(
                    report["baseline"][mode][STEADY], report["results"][mode][STEADY]
                )
            args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    summary = {mode: result[STEADY] for mode, result in report["results"].items()}
    logging.getLogger("consortia.bench").info("%s", json.dumps(summary, indent=2))


def _baseline_args(args: argparse.Namespace, mode: str) -> list[str]:
    """The same settings, for the baseline tree's copy of this script (one mode)."""
    out = ["--modes", mode, "--sites", str(args.sites), "--rounds", str(args.rounds)]
    out += ["--cases", str(args.cases), "--local-epochs", str(args.local_epochs)]
    out += ["--image-size", str(args.image_size), "--channels", *map(str, args.channels)]
    if args.keep:
        out += ["--keep", str(args.keep / "baseline")]
    return out


def _change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Steady-state wall time and overhead per round, after minus before."""
    return {
        "mean_wall_s": round(after["mean_wall_s"] - before["mean_wall_s"], 3),
        "mean_overhead_s": round(after["mean_overhead_s"] - before["mean_overhead_s"], 3),
    }


if __name__ == "__main__":
    main()
