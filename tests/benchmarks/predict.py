"""`consortia predict` throughput on real 3D hippocampus MRI, beside a plain MONAI loop.

The model is the hippocampus study's U-Net (`configs/real/run-hippocampus.toml`), with
initial (untrained: speed does not depend on the weights) weights recorded in a run folder
and exported with `consortia model export` (`--manifest` the shipped hippocampus-a
manifest: `[preprocess]` spatial_size [40, 56, 40], labels). For the same volumes
(MSD Task04, shared data) it times, round-robin (every round runs both variants, so a
burst of load on the machine hits both):

- ``predict``: `consortia predict`'s path per image (`predict_images`, one image at a
  time): read the NIfTI, `prepare_image`, z-score, `SlidingWindowInferer`, inverse of the
  pad/crop back to the image's grid, argmax, NIfTI mask written;
- ``plain``: nibabel load, the same pad/crop and z-score written by hand, MONAI's
  `sliding_window_inference` on the TorchScript model, argmax, no file written.

It also records the largest absolute difference to the checkpoint's outputs of each
export format (ONNX when onnx/onnxruntime are installed). Writes JSON::

    python tests/benchmarks/predict.py --images 8 --rounds 3 \\
        --output docs/benchmarks/predict-2026-12-07.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import monai
import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import ResizeWithPadOrCrop

from consortia.client.predict.batch import predict_images
from consortia.client.predict.exported import ExportedModel
from consortia.client.training.trainer import normalize_images
from consortia.common.config.settings import load_run_settings
from consortia.common.networks.models import build_model
from consortia.server.export.exporter import export_model
from consortia.server.run.folder import RunFolder

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "hippocampus" / "images"
RUN_TOML = ROOT / "configs" / "real" / "run-hippocampus.toml"
MANIFEST = ROOT / "configs" / "real" / "manifests" / "hippocampus-a.toml"
SIZE = (40, 56, 40)


def _run_folder(folder: Path) -> Path:
    settings = load_run_settings(RUN_TOML)
    torch.manual_seed(0)
    model = build_model(settings.model.to_model_settings())
    run = RunFolder(
        folder / "run",
        {
            "run_name": "hippocampus",
            "task": "segmentation",
            "settings": settings.model_dump(mode="json"),
        },
    )
    relative, digest = run.checkpoint(1, model.state_dict())
    run.update_round(1, checkpoint=relative, model_sha256=digest)
    run.finish("completed")
    return folder / "run"


def _plain(model: Any, images: list[Path]) -> None:
    """The plain alternative: what a user would write around MONAI's inferer."""
    fit = ResizeWithPadOrCrop(SIZE)
    for path in images:
        source: Any = nib.load(path)
        data = np.ascontiguousarray(np.asarray(source.dataobj, dtype=np.float32).T[None])
        image = torch.as_tensor(fit(torch.from_numpy(data)))[None].float()
        logits = sliding_window_inference(normalize_images(image), SIZE, 1, model)
        torch.as_tensor(logits).argmax(dim=1)


def _time(step: Any) -> tuple[float, float]:
    """(wall, process CPU) seconds of `step()`."""
    start, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    torch.set_num_threads(args.threads)
    images = sorted(DATA.glob("*.nii.gz"))[: args.images]
    if not images:
        raise SystemExit(f"{DATA}: shared hippocampus data not found")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_dir = _run_folder(folder)
        differences: dict[str, float | None] = {}
        for fmt in ("torchscript", "monai-bundle", "onnx"):
            try:
                result = export_model(run_dir, folder / fmt, fmt, manifest=MANIFEST)
                differences[fmt] = result.max_abs_diff
            except Exception as err:  # onnx missing: say so in the JSON
                differences[fmt] = None
                logging.getLogger(__name__).warning("%s: %s", fmt, err)
        exported = ExportedModel.load(folder / "torchscript", torch.device("cpu"))
        times: dict[str, list[float]] = {"predict": [], "plain": []}
        cpu: dict[str, list[float]] = {"predict": [], "plain": []}
        predict_images(exported, images[:1], folder / "warm")  # warm-up
        for round_number in range(args.rounds):
            out = folder / f"out-{round_number}"
            for name, step in (
                ("predict", lambda o=out: predict_images(exported, images, o)),
                ("plain", lambda: _plain(exported.forward, images)),
            ):
                wall, used = _time(step)
                times[name].append(wall)
                cpu[name].append(used)
    per_image = {k: statistics.median(v) / len(images) for k, v in times.items()}
    cpu_per_image = {k: statistics.median(v) / len(images) for k, v in cpu.items()}
    report = {
        "benchmark": "predict",
        "date": dt.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "torch_threads": args.threads,
            "device": "cpu",
            "processor": platform.processor(),
        },
        "versions": {"torch": torch.__version__, "monai": monai.__version__},
        "data": "MSD Task04 hippocampus MRI (shared data), first volumes by file name",
        "model": "run-hippocampus.toml U-Net (16-32-64-128), [preprocess] 40x56x40",
        "images": len(images),
        "rounds": args.rounds,
        "seconds_per_round": times,
        "median_seconds_per_image": per_image,
        "images_per_second": {k: 1.0 / v for k, v in per_image.items()},
        "predict_over_plain": per_image["predict"] / per_image["plain"],
        "median_cpu_seconds_per_image": cpu_per_image,
        "predict_over_plain_cpu": cpu_per_image["predict"] / cpu_per_image["plain"],
        "note": "2 shared CPU cores, other jobs running: wall times vary with their load; "
        "process CPU time is the steadier measure",
        "max_abs_diff_vs_checkpoint": differences,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
