"""Test helper: a run folder of a tiny model trained in-process on real files, the way a
federation leaves one (results.json through `RunFolder`, a checkpoint, the evaluation the
sites' own code computes), for export and predict tests without a federation.

`write_cases` writes NIfTI cases (image + label) of blobs; `trained_run` reads them as
training does (the data readers and `prepare_image`/`prepare_label`), trains a few steps
with `train_local`, evaluates with `evaluate_local` and records everything in a real run
folder, with a data manifest holding the `[preprocess]` and labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from consortia.client.data.formats.geometry import grid_affine
from consortia.client.data.formats.nifti import read_nifti, read_nifti_label
from consortia.client.data.manifest import PreprocessSettings
from consortia.client.data.preprocess import apply_plan, prepare_image, prepare_label
from consortia.client.data.site_data import SiteArrays
from consortia.client.training.trainer import evaluate_local, train_local
from consortia.common.config.plan_settings import PlanSettings
from consortia.common.config.settings import ModelConfig, RunSettings, Task
from consortia.server.run.evaluation import site_metrics
from consortia.server.run.folder import RunFolder

__all__ = ["TrainedRun", "blob_case", "prepared_case", "trained_run", "write_cases"]

LABELS = {0: "background", 1: "lesion"}


@dataclass(frozen=True)
class TrainedRun:
    """The run folder, its manifest, the evaluated cases and the recorded metrics."""

    run_dir: Path
    manifest: Path
    images: list[Path]
    labels: list[Path]
    metrics: dict[str, float]
    preprocess: PreprocessSettings


def blob_case(shape: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image (float32) with a bright ellipsoid and its mask (uint8), in (i, j[, k])."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = [n / 2 + rng.uniform(-1, 1) for n in shape]
    radius = [max(2.0, n / 5) for n in shape]
    inside = (
        np.asarray(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius, strict=True)))
        <= 1
    )
    image = rng.normal(100, 10, size=shape) + 80 * inside
    return image.astype(np.float32), inside.astype(np.uint8)


def write_cases(
    folder: Path, shapes: Sequence[Sequence[int]], spacing: Sequence[float]
) -> tuple[list[Path], list[Path]]:
    """NIfTI image/label pairs of `blob_case`s with a rotated, offset affine."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, *([1.0] * (3 - len(spacing))), 1.0])
    affine[:3, :3] = affine[:3, :3] @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    affine[:3, 3] = (12.0, -30.0, 4.5)
    images, labels = [], []
    for index, shape in enumerate(shapes):
        image, label = blob_case(shape, index)
        images.append(folder / f"case-{index:02d}.nii.gz")
        labels.append(folder / f"case-{index:02d}_label.nii.gz")
        nib.save(nib.Nifti1Image(image, affine), images[-1])
        nib.save(nib.Nifti1Image(label, affine), labels[-1])
    return images, labels


def prepared_case(
    image_path: Path,
    label_path: Path,
    preprocess: PreprocessSettings,
    plan: PlanSettings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A case as the sites prepare it: `[preprocess]`, or the run's plan."""
    volume = read_nifti(image_path)
    label = read_nifti_label(label_path, volume)
    if plan is None:
        image = prepare_image(volume.array, preprocess, str(image_path))
        return image, prepare_label(label, preprocess, str(label_path))
    image, mask = apply_plan(
        volume.array,
        label,
        spacing=volume.spacing,
        affine=grid_affine(volume),
        plan=plan,
        channels=1,
        where=str(image_path),
    )
    assert mask is not None
    return image, mask


def _arrays(
    images: Sequence[Path],
    labels: Sequence[Path],
    preprocess: PreprocessSettings,
    plan: PlanSettings | None,
) -> SiteArrays:
    cases = [prepared_case(i, m, preprocess, plan) for i, m in zip(images, labels, strict=True)]
    return SiteArrays(np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases]), plan)


def _manifest(path: Path, preprocess: PreprocessSettings) -> Path:
    size = ", ".join(str(n) for n in preprocess.spatial_size)
    path.write_text(
        '[dataset]\nname = "site"\ntask = "segmentation"\n'
        'labels = { 0 = "background", 1 = "lesion" }\n\n'
        f'[preprocess]\nspatial_size = [{size}]\nchannels = 1\nresize = "{preprocess.resize}"\n',
        encoding="utf-8",
    )
    return path


def trained_run(
    folder: Path,
    images: Sequence[Path],
    labels: Sequence[Path],
    preprocess: PreprocessSettings,
    model: dict[str, Any],
    *,
    steps: int = 4,
    status: str = "completed",
    plan: PlanSettings | None = None,
) -> TrainedRun:
    """Train on all cases for `steps` epochs, evaluate on them, record a run folder (with
    `plan`: a run whose `[run.plan]` prepares the cases)."""
    settings = RunSettings(
        name="study", task=Task.SEGMENTATION, rounds=2, model=ModelConfig(**model), plan=plan
    )
    torch.manual_seed(0)
    from consortia.common.networks.models import build_model

    network = build_model(settings.model.to_model_settings())
    arrays = _arrays(images, labels, preprocess, plan)
    device = torch.device("cpu")
    train_local(
        network,
        arrays,
        Task.SEGMENTATION,
        epochs=steps,
        batch_size=2,
        learning_rate=1e-2,
        seed=0,
        device=device,
    )
    result = evaluate_local(
        network,
        arrays,
        Task.SEGMENTATION,
        num_classes=2,
        batch_size=2,
        device=device,
        surface_distances=False,
    )
    metrics = site_metrics(Task.SEGMENTATION, result.sums, result.histograms)
    run_dir = folder / "runs" / "study"
    header = {
        "run_name": "study",
        "task": "segmentation",
        "settings": settings.model_dump(mode="json"),
        "config_hash": "c" * 64,
    }
    run = RunFolder(run_dir, header)
    relative, digest = run.checkpoint(1, network.state_dict())
    evaluation = {"sites": {"holdout-site": metrics}, "holdout": metrics}
    run.update_round(1, checkpoint=relative, model_sha256=digest, evaluation=evaluation)
    if status == "completed":
        run.finish("completed")
    else:
        run.finish(status, error="site lost")
    manifest = _manifest(folder / "manifest.toml", preprocess)
    return TrainedRun(run_dir, manifest, list(images), list(labels), metrics, preprocess)
