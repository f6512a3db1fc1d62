"""The segmentation recipe (issue 17): planner, plan preprocessing, patches, sliding-window
evaluation and surface distances in mm.

The preprocessing round trip runs on real MSD hippocampus cases in ../shared/data and is
skipped, with the reason, when they are absent."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from monai.networks.utils import one_hot
from pydantic import ValidationError

from consortia.client.data.fingerprint import dataset_fingerprint
from consortia.client.data.formats.geometry import grid_affine
from consortia.client.data.formats.nifti import read_nifti, read_nifti_label
from consortia.client.data.formats.volume import CaseProblem
from consortia.client.data.preprocess import apply_plan
from consortia.client.data.site_data import SiteArrays
from consortia.client.training.augment import BatchAugmenter
from consortia.client.training.trainer import evaluate_local
from consortia.common.config.plan_settings import PlanSettings
from consortia.common.config.planner import (
    Fingerprint,
    IntensityStats,
    merge_fingerprints,
    plan_from_fingerprint,
    plan_toml,
)
from consortia.common.config.settings import RunSettings, Task
from consortia.common.metrics.exact import (
    SegmentationMetricAccumulator,
    finalize_segmentation,
)

REPO = Path(__file__).resolve().parents[2]
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "hippocampus"


def _plan(**changes: object) -> PlanSettings:
    values: dict[str, object] = {
        "target_spacing": (1.0, 1.0, 1.0),
        "spatial_size": (16, 16, 16),
        "patch_size": (8, 8, 8),
    }
    values.update(changes)
    return PlanSettings.model_validate(values)


def _print(
    cases: int, spacing: tuple[float, ...], median: tuple[float, ...], largest: tuple[float, ...]
) -> Fingerprint:
    return Fingerprint(
        orientation="RAS",
        cases=cases,
        median_spacing=spacing,
        median_extent_mm=median,
        max_extent_mm=largest,
        intensity=IntensityStats(voxels=100 * cases, mean=cases, std=1.0, p00_5=-1, p99_5=9),
    )


# --- the plan in the run config -----------------------------------------------------------


def test_run_settings_take_a_plan_and_stay_valid_without_one() -> None:
    assert RunSettings().plan is None
    settings = RunSettings.model_validate({"plan": _plan().model_dump()})
    assert settings.plan == _plan()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"patch_size": (32, 8, 8)}, "larger than spatial_size"),
        ({"patch_size": (8, 8)}, "patch_size must have 3 entries"),
        ({"orientation": "RLS"}, "each anatomical axis once"),
        ({"modality": "CT"}, "needs ct_clip"),
        ({"modality": "CT", "ct_clip": (5.0, 1.0)}, "low < high"),
    ],
)
def test_a_bad_plan_names_the_problem(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _plan(**changes)


# --- the planner ----------------------------------------------------------------------------


def test_the_planner_takes_median_spacing_and_sizes_that_the_network_divides() -> None:
    merged = merge_fingerprints(
        [
            _print(10, (1.0, 1.0, 3.0), (30.0, 40.0, 60.0), (36.0, 52.0, 90.0)),
            _print(30, (1.0, 1.0, 1.0), (34.0, 44.0, 60.0), (44.0, 48.0, 72.0)),
        ]
    )
    assert merged.cases == 40
    assert merged.median_spacing == pytest.approx((1.0, 1.0, 1.5))
    assert merged.max_extent_mm == (44.0, 52.0, 90.0)
    plan = plan_from_fingerprint(merged, modality="MR", divisor=8)
    assert plan.target_spacing == (1.0, 1.0, 1.5)
    assert plan.spatial_size == (48, 56, 64)  # 44, 52, 60 voxels rounded up to 8
    assert plan.patch_size == (40, 48, 40)  # median 33, 43, 40 voxels rounded up
    assert plan.ct_clip is None
    text = plan_toml(plan)
    assert text.startswith("[run.plan]\n") and "spatial_size = [48, 56, 64]" in text


def test_merged_intensity_statistics_are_the_pooled_ones() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(5.0, 2.0, 400), rng.normal(9.0, 1.0, 100)]
    prints = [
        Fingerprint(
            orientation="RAS",
            cases=1,
            median_spacing=(1.0, 1.0, 1.0),
            median_extent_mm=(8.0, 8.0, 8.0),
            max_extent_mm=(8.0, 8.0, 8.0),
            intensity=IntensityStats(
                voxels=len(p),
                mean=float(p.mean()),
                std=float(p.std()),
                p00_5=float(np.percentile(p, 0.5)),
                p99_5=float(np.percentile(p, 99.5)),
            ),
        )
        for p in parts
    ]
    merged = merge_fingerprints(prints).intensity
    pooled = np.concatenate(parts)
    assert merged.voxels == 500
    assert merged.mean == pytest.approx(pooled.mean())
    assert merged.std == pytest.approx(pooled.std())
    ct = plan_from_fingerprint(merge_fingerprints(prints), modality="CT")
    assert ct.ct_clip == (merged.p00_5, merged.p99_5)
    assert ct.ct_mean == pytest.approx(pooled.mean())


def test_fingerprints_in_two_orientations_are_refused() -> None:
    other = _print(1, (1.0, 1.0, 1.0), (8.0, 8.0, 8.0), (8.0, 8.0, 8.0))
    flipped = other.model_copy(update={"orientation": "LPS"})
    with pytest.raises(ValueError, match="different orientations"):
        merge_fingerprints([other, flipped])


# --- plan preprocessing ---------------------------------------------------------------------


def _volume(tmp_path: Path, affine: np.ndarray, shape: tuple[int, int, int]) -> Path:
    """A NIfTI image and label pair; the label is a box, the image positive inside a
    smaller-than-full region (so cropping to non-zero has work to do)."""
    image = np.zeros(shape, np.float32)
    image[1:-1, 1:-1, 1:-1] = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)[
        1:-1, 1:-1, 1:-1
    ]
    label = np.zeros(shape, np.int16)
    label[3:6, 3:5, 2:4] = 1
    label[6, 5, 3] = 2
    tmp_path.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    return tmp_path


def _read(folder: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], np.ndarray | None]:
    volume = read_nifti(folder / "image.nii.gz")
    label = read_nifti_label(folder / "label.nii.gz", volume)
    return volume.array, label, volume.spacing, grid_affine(volume)


def test_plan_orients_resamples_crops_normalises_and_pads(tmp_path: Path) -> None:
    # i runs right-to-left (an "LAS" file) with 2 mm voxels along k
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    image, label, spacing, grid = _read(_volume(tmp_path, affine, (10, 8, 6)))
    out, mask = apply_plan(
        image, label, spacing=spacing, affine=grid, plan=_plan(), channels=1, where="case-1"
    )
    assert out.shape == (1, 16, 16, 16) and mask is not None and mask.shape == (16, 16, 16)
    assert set(np.unique(mask)) == {0, 1, 2}
    # labelled voxels: 3 x 2 x 2 at 2 mm along the last axis -> about 3 x 2 x 4 at 1 mm
    assert 18 <= int((mask == 1).sum()) <= 30
    inside = out[0][out[0] != 0]
    assert abs(float(inside.mean())) < 1e-3 and float(inside.std()) == pytest.approx(1.0, 1e-3)
    # The same image stored the other way along i (an "RAS" file): the same result.
    mirrored = read_nifti(
        _volume(tmp_path / "ras", np.diag([1.0, 1, 2, 1]), (10, 8, 6)) / "image.nii.gz"
    )
    flipped, _ = apply_plan(
        image[:, :, :, ::-1].copy(),
        label[:, :, ::-1].copy(),
        spacing=spacing,
        affine=grid_affine(mirrored),
        plan=_plan(),
        channels=1,
        where="case-2",
    )
    np.testing.assert_allclose(flipped, out, atol=1e-5)


def test_a_plan_too_small_for_a_case_is_an_error_naming_the_case(tmp_path: Path) -> None:
    image, label, spacing, grid = _read(_volume(tmp_path, np.eye(4), (10, 8, 6)))
    plan = _plan(spatial_size=(8, 8, 8), patch_size=(8, 8, 8), crop_foreground=False)
    with pytest.raises(CaseProblem, match="larger than the plan's spatial_size") as caught:
        apply_plan(image, label, spacing=spacing, affine=grid, plan=plan, channels=1, where="c7")
    assert caught.value.path == "c7"


def test_a_label_that_resampling_would_lose_is_an_error(tmp_path: Path) -> None:
    image, label, spacing, grid = _read(_volume(tmp_path, np.eye(4), (10, 8, 6)))
    plan = _plan(target_spacing=(4.0, 4.0, 4.0), spatial_size=(8, 8, 8), patch_size=(8, 8, 8))
    with pytest.raises(CaseProblem, match=r"would remove label\(s\) \[1, 2\]"):
        apply_plan(image, label, spacing=spacing, affine=grid, plan=plan, channels=1, where="c")


def test_a_3d_image_without_orientation_is_an_error() -> None:
    image = np.ones((1, 4, 4, 4), np.float32)
    with pytest.raises(CaseProblem, match="orientation cannot be read"):
        apply_plan(
            image, None, spacing=(1.0, 1.0, 1.0), affine=None, plan=_plan(), channels=1, where="c"
        )


def test_hippocampus_cases_keep_every_label_through_the_plan() -> None:
    if not HIPPOCAMPUS.is_dir():
        pytest.skip(f"real data set not present: {HIPPOCAMPUS} (see ../shared/data)")
    plan = _plan(target_spacing=(1.0, 1.0, 1.0), spatial_size=(48, 64, 48), patch_size=(40, 56, 40))
    images = sorted((HIPPOCAMPUS / "images").glob("*.nii.gz"))
    assert images
    for path in images[::13]:  # 16 of the 208 cases: the whole set takes minutes
        volume = read_nifti(path)
        label = read_nifti_label(HIPPOCAMPUS / "labels" / path.name, volume)
        _, mask = apply_plan(
            volume.array,
            label,
            spacing=volume.spacing,
            affine=grid_affine(volume),
            plan=plan,
            channels=1,
            where=path.name,
        )
        assert mask is not None
        # 1 mm to 1 mm: every labelled voxel is kept, class by class
        for value in (1, 2):
            assert int((mask == value).sum()) == int((label == value).sum()), path.name


def test_the_site_fingerprint_holds_aggregates_only(tmp_path: Path) -> None:
    _volume(tmp_path, np.diag([1.0, 1.0, 2.0, 1.0]), (10, 8, 6))
    manifest = tmp_path / "data.toml"
    manifest.write_text(
        '[dataset]\nname = "tiny"\ntask = "segmentation"\n'
        "[preprocess]\nspatial_size = [6, 8, 10]\n"
        '[[case]]\nid = "a"\nimage = { nifti = "image.nii.gz" }\n'
        'label = { mask = "label.nii.gz" }\nsplit = "train"\n'
    )
    result = dataset_fingerprint(manifest)
    assert result.cases == 1
    assert result.median_spacing == (1.0, 1.0, 2.0)
    assert result.median_extent_mm == (8.0, 6.0, 8.0)  # the non-zero region, in mm
    assert result.max_extent_mm == (8.0, 8.0, 8.0)  # rounded up to whole 4 mm
    assert "image" not in result.model_dump_json()


# --- training patches -----------------------------------------------------------------------


def test_patches_oversample_the_foreground_one_per_case() -> None:
    images = torch.randn(6, 1, 16, 16, 16)
    targets = torch.zeros(6, 1, 16, 16, 16, dtype=torch.int64)
    targets[:, :, 12:14, 1:3, 12:14] = 1
    augment = BatchAugmenter(
        intensity=False, flip_axes=(), seed=3, patch_size=(6, 6, 6), foreground_ratio=1.0
    )
    patches, masks = augment(images, targets)
    assert patches.shape == (6, 1, 6, 6, 6) and masks.shape == (6, 1, 6, 6, 6)
    assert all(bool(mask.any()) for mask in masks)  # every patch holds foreground


# --- evaluation -----------------------------------------------------------------------------


def test_sliding_window_evaluation_equals_whole_image_evaluation() -> None:
    torch.manual_seed(0)
    # A voxel-wise model: any window gives the same logits as the whole image.
    model = torch.nn.Conv3d(1, 3, kernel_size=1)
    images = torch.randn(3, 1, 16, 16, 16).numpy()
    targets = np.zeros((3, 16, 16, 16), np.int64)
    targets[:, 4:9, 3:10, 5:12] = 1
    targets[:, 10:13, 3:6, 5:8] = 2
    plain = SiteArrays(images, targets)
    windows = SiteArrays(images, targets, _plan(patch_size=(8, 8, 8)))
    cpu = torch.device("cpu")
    whole = evaluate_local(model, plain, Task.SEGMENTATION, num_classes=3, batch_size=2, device=cpu)
    slid = evaluate_local(
        model, windows, Task.SEGMENTATION, num_classes=3, batch_size=2, device=cpu
    )
    assert finalize_segmentation(slid.sums) == pytest.approx(finalize_segmentation(whole.sums))


def test_surface_distances_in_mm_match_monai() -> None:
    pred = torch.zeros(2, 12, 12, 12, dtype=torch.int64)
    target = torch.zeros_like(pred)
    pred[0, 2:7, 2:7, 2:7] = 1
    target[0, 3:9, 2:7, 2:8] = 1
    pred[1, 4:10, 4:10, 1:5] = 1
    target[1, 4:9, 5:10, 2:5] = 1
    spacing = (0.8, 1.2, 2.5)
    accumulator = SegmentationMetricAccumulator(num_classes=2, spacing=spacing)
    accumulator.update(pred, target)
    result = finalize_segmentation(accumulator.summary())
    p1h = one_hot(pred.unsqueeze(1), 2)
    t1h = one_hot(target.unsqueeze(1), 2)
    hd = compute_hausdorff_distance(p1h, t1h, percentile=95, spacing=spacing)
    asd = compute_average_surface_distance(p1h, t1h, symmetric=True, spacing=spacing)
    assert result["hd95"] == pytest.approx(float(hd.mean()))
    assert result["asd"] == pytest.approx(float(asd.mean()))
    voxels = SegmentationMetricAccumulator(num_classes=2)
    voxels.update(pred, target)
    assert finalize_segmentation(voxels.summary())["hd95"] != pytest.approx(result["hd95"])


# --- the commands -----------------------------------------------------------------------------


def test_data_fingerprint_and_plan_commands_write_a_plan_a_run_config_accepts(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from consortia.common.cli import build_app
    from consortia.common.config.settings import load_run_settings

    _volume(tmp_path, np.diag([1.0, 1.0, 2.0, 1.0]), (10, 8, 6))
    manifest = tmp_path / "data.toml"
    manifest.write_text(
        '[dataset]\nname = "tiny"\ntask = "segmentation"\n'
        "[preprocess]\nspatial_size = [6, 8, 10]\n"
        '[[case]]\nid = "a"\nimage = { nifti = "image.nii.gz" }\n'
        'label = { mask = "label.nii.gz" }\nsplit = "train"\n'
    )
    runner = CliRunner()
    app = build_app()
    done = runner.invoke(
        app, ["data", "fingerprint", str(manifest), "--out", str(tmp_path / "a.json")]
    )
    assert done.exit_code == 0, done.output
    assert "image.nii.gz" not in (tmp_path / "a.json").read_text()
    plan = tmp_path / "plan.toml"
    done = runner.invoke(
        app, ["plan", str(tmp_path / "a.json"), "--divisor", "4", "--out", str(plan)]
    )
    assert done.exit_code == 0, done.output
    run = tmp_path / "run.toml"
    run.write_text('[run]\nname = "tiny"\n' + plan.read_text())
    settings = load_run_settings(run)
    assert settings.plan is not None
    assert settings.plan.spatial_size == (8, 8, 4) and settings.plan.target_spacing == (
        1.0,
        1.0,
        2.0,
    )
    bad = runner.invoke(app, ["plan", str(manifest)])
    assert bad.exit_code != 0 and "not a fingerprint" in bad.output
