"""DP-SGD overhead per training step: non-DP against Opacus' default DP and our DP path.

For each model it builds three copies with the same weights and one fixed batch, and times
a training step of each, side by side (round-robin: every round runs one step of every
variant, so a burst of load on the machine hits all of them):

- ``non_dp``: our normal step (``consortia.client.training.trainer.train_local``): forward, loss,
  backward, Adam step (under ``common.device.autocast``: bfloat16 on CUDA, none on CPU);
- ``opacus_default``: DP-SGD as Opacus ships it (``PrivacyEngine.make_private`` with
  ``grad_sample_mode="hooks"``, the model as built by ``build_model``);
- ``ours``: the path ``train_local_dp`` takes by default (``grad_sample_mode="auto"``);
- ``opacus_ghost`` (only with ``--variants``, classification only): Opacus' ghost clipping.

A DP step is timed on the same fixed batch (Poisson sampling only changes the batch size).
Images are normalised once, outside the timed step. Per variant it reports the median,
mean and min time per step after warm-up, the process CPU time per step, and the peak
memory of a separate pass of two steps: on CPU the peak resident set size (``VmHWM`` of
``/proc/self/status``, reset through ``/proc/self/clear_refs`` before each variant; psutil
is not used) and its increase over the resident size before the pass; on CUDA
``torch.cuda.max_memory_allocated``. Ratios are DP / non-DP: the median over rounds of the
per-round ratio, and the ratio of the medians. Writes JSON::

    python tests/benchmarks/dp_overhead.py --threads 1 2 --output dp_overhead.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import monai
import opacus
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consortia.client.privacy.dp_engine import PrivateStep, make_private_step
from consortia.client.training.trainer import loss_function, normalize_images
from consortia.common.config.settings import Task
from consortia.common.logs import setup_logging
from consortia.common.networks.device import autocast
from consortia.common.networks.models import ModelSettings, build_model

__all__ = ["MODELS", "main"]

logger = logging.getLogger("consortia.bench")

_UNET: dict[str, Any] = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "norm_groups": 8}
_STEM3: dict[str, Any] = {
    "conv1_kernel": 3,
    "conv1_stride": 1,
    "no_max_pool": False,
    "norm_groups": 8,
}

#: name -> (settings, task, spatial dims). The U-Net and ResNet-18 are the ones of
#: configs/run-segmentation.toml and configs/run-classification.toml.
MODELS: dict[str, tuple[ModelSettings, Task]] = {
    "unet2d": (ModelSettings("unet", num_res_units=0, **_UNET), Task.SEGMENTATION),
    "unet3d": (
        ModelSettings("unet", spatial_dims=3, num_res_units=0, **_UNET),
        Task.SEGMENTATION,
    ),
    "resnet18": (ModelSettings("resnet18", **_STEM3), Task.CLASSIFICATION),
    "unet2d-res1": (ModelSettings("unet", num_res_units=1, **_UNET), Task.SEGMENTATION),
    "resnet18-stem7": (ModelSettings("resnet18"), Task.CLASSIFICATION),
}
VARIANTS = ("non_dp", "opacus_default", "ours", "opacus_ghost")


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    status = Path("/proc/self/status").read_text()
    rss = re.search(r"VmRSS:\s+(\d+)", status)
    hwm = re.search(r"VmHWM:\s+(\d+)", status)
    if rss is None or hwm is None:
        raise RuntimeError("no VmRSS/VmHWM in /proc/self/status")
    return int(rss.group(1)) / 1024, int(hwm.group(1)) / 1024


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _batch(
    settings: ModelSettings, task: Task, batch: int, size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    spatial = (size,) * settings.spatial_dims
    images = torch.rand((batch, settings.in_channels, *spatial), generator=generator)
    if task is Task.SEGMENTATION:
        targets = (images[:, :1] > 0.7).long()  # (B, 1, *spatial), as train_local feeds it
    else:
        targets = torch.randint(0, settings.out_channels, (batch,), generator=generator)
    return normalize_images(images).to(device), targets.to(device)


def _non_dp_step(
    model: nn.Module, task: Task, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = loss_function(task)

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()

    return step


def _dp_step(
    model: nn.Module,
    task: Task,
    device: torch.device,
    images: torch.Tensor,
    targets: torch.Tensor,
    mode: str,
) -> PrivateStep:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(images.cpu(), targets.cpu()), batch_size=len(images))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
    return make_private_step(
        model,
        optimizer,
        loss_function(task),
        loader,
        engine=engine,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        mode=mode,
        autocast=lambda: autocast(device),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(
    name: str,
    variant: str,
    args: argparse.Namespace,
    device: torch.device,
    step: Callable[[torch.Tensor, torch.Tensor], Any],
) -> dict[str, Any]:
    """Peak memory of two steps. CUDA: in this process. CPU: in a fresh process (freed
    memory stays resident in this one, so its peak RSS would mix the variants)."""
    if device.type == "cuda":
        settings, task = MODELS[name]
        images, targets = _batch(settings, task, *_shape(settings, args), device)
        _release(step)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(2):
            step(images, targets)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        _release(step)
        return {
            "memory": "torch.cuda.max_memory_allocated",
            "peak_mib": round(peak / 2**20, 1),
            "step_increase_mib": round((peak - before) / 2**20, 1),
        }
    threads = str(torch.get_num_threads())
    command = [sys.executable, __file__, "--probe", name, variant, "--threads", threads]
    for option in ("batch_size", "image_size", "batch_size_3d", "volume_size"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    probe: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return probe


def _probe(name: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: resident memory before and at the peak of two steps."""
    settings, task = MODELS[name]
    device = torch.device("cpu")
    images, targets = _batch(settings, task, *_shape(settings, args), device)
    step = _make_step(variant, settings, task, device, images, targets)
    rss_before, _ = _rss_mib()
    reset = _reset_peak_rss()
    for _ in range(2):
        step(images, targets)
    _, rss_peak = _rss_mib()
    return {
        "memory": "peak RSS of a fresh process (VmHWM)" if reset else "peak RSS (process)",
        "peak_mib": round(rss_peak, 1),
        "step_increase_mib": round(rss_peak - rss_before, 1),
    }


def _release(step: Callable[..., Any]) -> None:
    """Drop a DP step's per-example buffers (Opacus keeps them until the next step)."""
    if isinstance(step, PrivateStep):
        step.optimizer.zero_grad(set_to_none=True)


def _summary(times: list[float], cpu: list[float]) -> dict[str, Any]:
    return {
        "median_ms": round(1e3 * statistics.median(times), 2),
        "mean_ms": round(1e3 * statistics.mean(times), 2),
        "min_ms": round(1e3 * min(times), 2),
        "max_ms": round(1e3 * max(times), 2),
        "cpu_median_ms": round(1e3 * statistics.median(cpu), 2),
    }


def _shape(settings: ModelSettings, args: argparse.Namespace) -> tuple[int, int]:
    """(batch size, side length) for the model's dimensionality."""
    if settings.spatial_dims == 3:
        return args.batch_size_3d, args.volume_size
    return args.batch_size, args.image_size


def _make_step(
    variant: str,
    settings: ModelSettings,
    task: Task,
    device: torch.device,
    images: torch.Tensor,
    targets: torch.Tensor,
) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """A fresh model (the same weights for every variant: seed 0) and its training step."""
    torch.manual_seed(0)
    model = build_model(settings).to(device).train()
    if variant == "non_dp":
        return _non_dp_step(model, task, device)
    mode = {"opacus_default": "hooks", "ours": "auto", "opacus_ghost": "ghost"}[variant]
    return _dp_step(model, task, device, images, targets, mode)


def measure_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time and memory of every variant for one model."""
    settings, task = MODELS[name]
    batch, size = _shape(settings, args)
    images, targets = _batch(settings, task, batch, size, device)
    variants = [v for v in args.variants if v != "opacus_ghost" or task is Task.CLASSIFICATION]
    steps: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] = {}
    private: dict[str, PrivateStep] = {}
    for variant in variants:
        step = _make_step(variant, settings, task, device, images, targets)
        steps[variant] = step
        if isinstance(step, PrivateStep):
            private[variant] = step
    result: dict[str, Any] = {
        "model": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
        "task": task.value,
        "input_shape": list(images.shape),
        "batch_size": batch,
        "engines": {variant: step.mode for variant, step in private.items()},
        "variants": {},
    }
    for variant in steps:
        result["variants"][variant] = _peak_memory(name, variant, args, device, steps[variant])
    for _ in range(args.warmup):
        for step in steps.values():
            step(images, targets)
    _sync(device)
    times: dict[str, list[float]] = {v: [] for v in steps}
    cpu: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(args.steps):
        for variant, step in steps.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            step(images, targets)
            _sync(device)
            times[variant].append(time.perf_counter() - started)
            cpu[variant].append(time.process_time() - cpu_started)
    for variant in steps:
        entry = result["variants"][variant]
        entry.update(_summary(times[variant], cpu[variant]))
        if variant != "non_dp":
            per_round = [t / p for t, p in zip(times[variant], times["non_dp"], strict=True)]
            entry["ratio_median_of_rounds"] = round(statistics.median(per_round), 2)
            entry["ratio_of_medians"] = round(
                statistics.median(times[variant]) / statistics.median(times["non_dp"]), 2
            )
            entry["ratio_of_mins"] = round(min(times[variant]) / min(times["non_dp"]), 2)
    for step in private.values():
        step.close()
    return result


def _devices(choice: str) -> list[torch.device]:
    if choice == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but CUDA is not available")
    return [torch.device(choice)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet2d", "unet3d", "resnet18"])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=32, help="2D models")
    parser.add_argument("--image-size", type=int, default=64, help="2D side length")
    parser.add_argument("--batch-size-3d", type=int, default=4)
    parser.add_argument("--volume-size", type=int, default=32, help="3D side length")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="CPU threads")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=["non_dp", "opacus_default", "ours"]
    )
    parser.add_argument("--output", type=Path, default=Path("dp_overhead.json"))
    parser.add_argument("--probe", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:  # internal: one variant's peak memory, in a fresh process
        torch.set_num_threads(args.threads[0])
        model, variant = args.probe
        print(json.dumps(_probe(model, variant, args)))  # the parent process reads this line
        return
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    if "non_dp" not in args.variants:
        parser.error("--variants must include non_dp (the ratios are relative to it)")
    setup_logging()
    report: dict[str, Any] = {
        "benchmark": "dp_overhead",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_start": list(os.getloadavg()),
        },
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "opacus": opacus.__version__,
            "monai": monai.__version__,
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cuda": {
            "available": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "runs": [],
    }
    for device in _devices(args.device):
        for threads in args.threads if device.type == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            run: dict[str, Any] = {"device": device.type, "threads": threads, "models": {}}
            report["runs"].append(run)
            for name in args.models:
                logger.info("%s, %d threads: %s", device.type, threads, name)
                run["models"][name] = measure_model(name, args, device)
                variants = run["models"][name]["variants"].items()
                ratios = {v: r.get("ratio_median_of_rounds") for v, r in variants}
                logger.info("  DP / non-DP: %s", ratios)
                report["machine"]["load_average_end"] = list(os.getloadavg())
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
