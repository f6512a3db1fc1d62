"""Secure against plain aggregation: round time and upload bytes, side by side.

For each number of training sites (default 4 and 8) it runs two whole federations through
the real runtime, exactly as `consortia demo` does (SuperLink and one SuperNode plus
executor per site on 127.0.0.1, TLS, registered keys, signed updates, approvals), once
with `[run.secure_aggregation] mode = "on"` and once with `"off"`, same data, same seeds,
same 2D U-Net, no held-out site. It reads each run's results.json:

- round time: the mean `duration_s` of rounds 2..R (round 1 of a secure run also holds
  the session's key exchange, reported separately as `first_round_s`);
- upload bytes: serialised replies of the round's sites (`upload_bytes`), per site;
- the held-out-free training Dice after the last round (a sanity check: both runs learn
  the same model up to quantisation).

It also times the protocol's own work on the model's vector in one process (a site's
masking, the server's unmasking), to separate cryptography from message latency. Writes
JSON::

    python -m tests.benchmarks.secure_aggregation --sites 4 8 --output secure_aggregation.json
    python -m tests.benchmarks.secure_aggregation --sites 4 --dp --cases 960 --output sa-dp.json

With ``--baseline-src TREE`` (a source tree of earlier code, see ``baseline.py``) each
number of sites runs on that tree first and on this one right after, under the same load;
the report holds both (``baseline`` and ``results``) and the round-time change.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from consortia.client.secure_aggregation.session import SecAggClient
from consortia.common.logs import setup_logging
from consortia.common.networks.models import build_model
from consortia.common.networks.weights import WeightLayout
from consortia.common.secure_aggregation.config import SecAggConfig, default_threshold
from consortia.server.launch.demo import DemoOptions, demo_run_settings, run_demo
from consortia.server.secure_aggregation.session import SecAggServer
from tests.benchmarks.baseline import run_baseline

__all__ = ["main", "protocol_timings", "run_pair"]

logger = logging.getLogger("consortia.benchmarks")

MODULE = "tests.benchmarks.secure_aggregation"
ROUND_S_MEAN = "round_s_mean"
FIRST_ROUND_S = "first_round_s"
MODES = ("plain", "secure")


def _summary(run_dir: Path, sites: int) -> dict[str, Any]:
    results = json.loads((run_dir / "results.json").read_text())
    rounds = [r for r in results["rounds"] if r["round"] >= 1]
    later = [r["duration_s"] for r in rounds[1:]]
    last = rounds[-1]
    return {
        "status": results["status"],
        FIRST_ROUND_S: rounds[0]["duration_s"],
        ROUND_S_MEAN: statistics.mean(later),
        "round_s": [r["duration_s"] for r in rounds],
        "upload_bytes_per_site": statistics.mean(r["upload_bytes"] / sites for r in rounds),
        "secure_status": [(r.get("secure_aggregation") or {}).get("status") for r in rounds],
        "training_sites_dice": (last.get("evaluation") or {}).get("training_sites"),
    }


def run_pair(
    sites: int, rounds: int, cases: int, output: Path, *, dp: bool, epochs: int = 1
) -> dict[str, Any]:
    """A secure and a plain run with `sites` training sites; their summaries."""
    quiet = Console(quiet=True)
    out: dict[str, Any] = {}
    for mode in MODES:
        options = DemoOptions(
            rounds=rounds,
            sites=sites,
            holdout_sites=0,
            dp=dp,
            local_epochs=epochs,
            train_cases=cases,
            test_cases=8,
            batch_size=64 if dp else 32,
            secure_aggregation=mode == "secure",
            output=output / f"{sites}-{mode}",
        )
        started = time.monotonic()
        run_dir = run_demo(options, quiet)
        out[mode] = _summary(run_dir, sites) | {"wall_s": time.monotonic() - started}
        logger.info("%d sites, %s: %s", sites, mode, out[mode])
    out["ratios"] = {
        "round_time": out["secure"][ROUND_S_MEAN] / out["plain"][ROUND_S_MEAN],
        "upload_bytes": out["secure"]["upload_bytes_per_site"]
        / out["plain"]["upload_bytes_per_site"],
    }
    return out


def protocol_timings(sites: int, vector_size: int, repeats: int = 3) -> dict[str, float]:
    """Milliseconds of one site's masking and of the server's unmasking, in-process."""
    nodes = list(range(1, sites + 1))
    config = SecAggConfig(
        session=7,
        participants=tuple(nodes),
        threshold=default_threshold(sites, sites - 1),
        neighbours=sites - 1,
        clip_range=4.0,
        vector_size=vector_size,
    )
    rng = np.random.default_rng(0)
    mask_ms: list[float] = []
    unmask_ms: list[float] = []
    server = SecAggServer(config)
    clients: dict[int, SecAggClient] = {}
    keys = {}
    for node in nodes:
        clients[node], keys[node] = SecAggClient.start(config, node)
    server.receive_public_keys(keys)
    for round_number in range(1, repeats + 1):
        server.begin_round(round_number, nodes)
        masked = {}
        for node in nodes:
            clients[node].receive_keys(server.keys_for(node))
            vector = rng.normal(0, 0.01, vector_size).astype(np.float32)
            started = time.perf_counter()
            vec, shares, _ = clients[node].mask(round_number, nodes, vector)
            mask_ms.append(1000 * (time.perf_counter() - started))
            masked[node] = (vec, shares)
        active, _ = server.receive_masked(masked)
        answers = {}
        for node in active:
            request = server.unmask_request(node)
            answers[node] = clients[node].unmask(round_number, *request)
        started = time.perf_counter()
        server.unmask(answers)
        unmask_ms.append(1000 * (time.perf_counter() - started))
    return {
        "site_mask_ms_median": statistics.median(mask_ms),
        "server_unmask_ms_median": statistics.median(unmask_ms),
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cases", type=int, default=256, help="training cases per site")
    parser.add_argument(
        "--dp", action="store_true", help="DP-SGD at the sites (the demo's realistic load)"
    )
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--output", type=Path, default=Path("secure_aggregation.json"))
    parser.add_argument("--keep", type=Path, help="keep the run folders here")
    parser.add_argument(
        "--baseline-src", type=Path, help="also run each size on this source tree, just before"
    )
    args = parser.parse_args(argv)
    setup_logging()
    settings = demo_run_settings(DemoOptions(), "bench")
    vector_size = WeightLayout.of(build_model(settings.model.to_model_settings()).state_dict()).size
    with tempfile.TemporaryDirectory() as scratch:
        output = args.keep or Path(scratch)
        report: dict[str, Any] = {
            "benchmark": "secure_aggregation",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "model": {"architecture": "unet", "spatial_dims": 2, "parameters": vector_size},
            "setup": {
                "rounds": args.rounds,
                "cases_per_site": args.cases,
                "batch_size": 64 if args.dp else 32,
                "dp": args.dp,
                "local_epochs": args.epochs,
                "image_size": 64,
            },
            "results": {},
        }
        if args.baseline_src:
            report |= {"baseline_src": str(args.baseline_src), "baseline": {}, "change": {}}
        for sites in args.sites:
            if args.baseline_src:
                before = run_baseline(
                    args.baseline_src, MODULE, _baseline_args(args, sites), "--output"
                )
                report["baseline"][str(sites)] = before["results"][str(sites)]
            entry = run_pair(sites, args.rounds, args.cases, output, dp=args.dp, epochs=args.epochs)
            if args.baseline_src:
                report["change"][str(sites)] = _change(report["baseline"][str(sites)], entry)
            entry["protocol"] = protocol_timings(sites, vector_size + 1)
            report["results"][str(sites)] = entry
            args.output.write_text(json.dumps(report, indent=2), encoding="utf-8")
    logger.info("wrote %s", args.output)


def _baseline_args(args: argparse.Namespace, sites: int) -> list[str]:
    """The same settings, for the baseline tree's copy of this script (one size)."""
    out = ["--sites", str(sites), "--rounds", str(args.rounds), "--cases", str(args.cases)]
    out += ["--epochs", str(args.epochs)] + (["--dp"] if args.dp else [])
    if args.keep:
        out += ["--keep", str(args.keep / "baseline")]
    return out


def _change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Mean round time (rounds 2..R) and first round, after minus before, per mode."""
    return {
        f"{mode}_{key}": after[mode][key] - before[mode][key]
        for mode in MODES
        for key in (ROUND_S_MEAN, FIRST_ROUND_S)
    }


if __name__ == "__main__":
    main()
