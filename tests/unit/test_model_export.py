"""`consortia model export` and `consortia predict` round trip on a tiny model trained
in-process (tests/support/trained_run.py): every export format, 2D and 3D, NIfTI and
DICOM SEG, the run's own evaluation reproduced, bad runs and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from consortia.client.data.formats.nifti import read_nifti, read_nifti_label
from consortia.client.data.manifest import PreprocessSettings
from consortia.client.data.preprocess import prepare_label
from consortia.client.predict.batch import predict_images
from consortia.client.predict.exported import ExportedModel
from consortia.common.cli import build_app
from consortia.common.config.plan_settings import PlanSettings
from consortia.common.config.settings import Task
from consortia.common.errors import ConsortiaError
from consortia.common.metrics.segmentation import SegmentationMetricAccumulator
from consortia.server.export.card import CARD_FILE
from consortia.server.export.exporter import export_model
from consortia.server.run.evaluation import site_metrics
from tests.support.dicom_factory import write_series
from tests.support.trained_run import TrainedRun, prepared_case, trained_run, write_cases

UNET_3D: dict[str, Any] = {
    "architecture": "unet",
    "spatial_dims": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
    "norm_groups": 2,
}
UNET_2D = {**UNET_3D, "spatial_dims": 2}
CPU = torch.device("cpu")
HAS_ONNX = pytest.importorskip is not None
try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
except ImportError:
    HAS_ONNX = False
needs_onnx = pytest.mark.skipif(
    not HAS_ONNX, reason="onnx/onnxruntime not installed (pip install 'consortia[export]')"
)


@pytest.fixture(scope="module")
def run_3d(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """Cases larger than the model input on every axis (a centred crop, labels inside)."""
    folder = tmp_path_factory.mktemp("run3d")
    images, labels = write_cases(
        folder / "cases", [(22, 20, 18), (20, 21, 19), (23, 22, 20)], (1.0, 1.2, 2.0)
    )
    preprocess = PreprocessSettings(spatial_size=(16, 16, 16))
    return trained_run(folder, images, labels, preprocess, UNET_3D)


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    folder = tmp_path_factory.mktemp("run2d")
    images, labels = write_cases(folder / "cases", [(30, 28), (26, 34), (28, 28)], (0.7, 0.7))
    preprocess = PreprocessSettings(spatial_size=(24, 24), resize="pad-crop")
    return trained_run(folder, images, labels, preprocess, UNET_2D, steps=6)


def _nifti(path: Path) -> Any:
    """A NIfTI image as nibabel loads it (typed loosely: nibabel's stubs say less)."""
    return nib.load(path)


def _dice_of_masks(run: TrainedRun, masks: list[Path]) -> float:
    """Dice of predicted masks against the labels on the model's grid, as sites score."""
    accumulator = SegmentationMetricAccumulator(num_classes=2, surface_distances=False)
    for image, label, mask in zip(run.images, run.labels, masks, strict=True):
        volume = read_nifti(image)
        where = str(mask)
        predicted = prepare_label(read_nifti_label(mask, volume), run.preprocess, where)
        target = prepare_label(read_nifti_label(label, volume), run.preprocess, where)
        accumulator.update(torch.from_numpy(predicted)[None], torch.from_numpy(target)[None])
    return site_metrics(Task.SEGMENTATION, accumulator.summary(), {})["dice"]


@pytest.mark.parametrize(
    "fmt", ["torchscript", "monai-bundle", pytest.param("onnx", marks=needs_onnx)]
)
def test_export_then_predict_reproduces_the_runs_evaluation(
    run_3d: TrainedRun, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / "model"
    result = export_model(run_3d.run_dir, out, fmt, manifest=run_3d.manifest)  # type: ignore[arg-type]
    assert result.round == 1 and result.note is None
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    card = json.loads((out / CARD_FILE).read_text())
    assert card["labels"] == {"0": "background", "1": "lesion"}
    assert card["preprocessing"]["dataset"]["spatial_size"] == [16, 16, 16]
    assert card["metrics"]["holdout"]["dice"] == pytest.approx(run_3d.metrics["dice"])
    assert card["provenance"]["config_hash"] == "c" * 64
    assert card["provenance"]["model_sha256"]
    before = [p.read_bytes() for p in run_3d.images]
    report = predict_images(ExportedModel.load(out, CPU), run_3d.images, tmp_path / "pred")
    assert not report.failed and len(report.written) == len(run_3d.images)
    assert [p.read_bytes() for p in run_3d.images] == before  # inputs untouched
    for image, mask in zip(run_3d.images, report.written, strict=True):
        written, source = _nifti(mask), _nifti(image)
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert abs(_dice_of_masks(run_3d, report.written) - run_3d.metrics["dice"]) <= 1e-4


def test_monai_bundle_loads_with_monais_own_parser(run_3d: TrainedRun, tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    from consortia.common.config.settings import ModelConfig
    from consortia.common.networks.models import build_model

    out = tmp_path / "bundle"
    export_model(run_3d.run_dir, out, "monai-bundle", manifest=run_3d.manifest)
    parser = ConfigParser()
    parser.read_meta(str(out / "configs" / "metadata.json"))
    parser.read_config(str(out / "configs" / "inference.json"))
    assert parser["_meta_"]["consortia"]["task"] == "segmentation"
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))
    reference = build_model(ModelConfig(**UNET_3D).to_model_settings())
    reference.load_state_dict(torch.load(run_3d.run_dir / "checkpoints" / "round-001.pt"))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(network.eval()(x), reference.eval()(x))
    assert parser.get_parsed_content("inferer").roi_size == [16, 16, 16]
    # The bundle's MONAI workflow parts (MONAI's loader, its z-score, Invertd, SaveImaged;
    # `evaluator` itself needs pytorch-ignite) give the mask `consortia predict` gives.
    parser["bundle_root"] = str(out)
    case = parser.get_parsed_content("preprocessing")({"image": str(run_3d.images[0])})
    with torch.no_grad():
        case["pred"] = parser.get_parsed_content("inferer")(case["image"][None], network)[0]
    parser.get_parsed_content("postprocessing")(case)
    monai_mask = np.asarray(_nifti(out / "eval" / "case-00_seg.nii.gz").dataobj)
    ours = predict_images(ExportedModel.load(out, CPU), run_3d.images[:1], tmp_path / "pred")
    mask = np.asarray(_nifti(ours.written[0]).dataobj)
    assert monai_mask.shape == mask.shape and (monai_mask == mask).mean() > 0.99


def test_2d_predict_writes_masks_in_the_inputs_geometry(run_2d: TrainedRun, tmp_path: Path) -> None:
    out = tmp_path / "model"
    export_model(run_2d.run_dir, out, "torchscript", manifest=run_2d.manifest)
    report = predict_images(ExportedModel.load(out, CPU), run_2d.images, tmp_path / "pred")
    assert not report.failed
    for image, mask in zip(run_2d.images, report.written, strict=True):
        assert _nifti(mask).shape == _nifti(image).shape
    assert abs(_dice_of_masks(run_2d, report.written) - run_2d.metrics["dice"]) <= 1e-4


def test_dicom_input_gets_a_seg_that_highdicom_reads_back(
    run_3d: TrainedRun, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    export_model(run_3d.run_dir, out, "torchscript", manifest=run_3d.manifest)
    image, label = (np.asarray(_nifti(p).dataobj) for p in (run_3d.images[0], run_3d.labels[0]))
    # DICOM slices along k: stored (D=k, H=j, W=i), as the NIfTI reader orders axes.
    stored = np.transpose(image, (2, 1, 0)).astype(np.int16)
    series = write_series(
        tmp_path / "dicom",
        n_slices=stored.shape[0],
        rows=stored.shape[1],
        columns=stored.shape[2],
        stored=stored,
        modality="MR",
    )
    report = predict_images(ExportedModel.load(out, CPU), [series.folder], tmp_path / "pred")
    assert not report.failed
    nifti, seg_path = report.written
    mask_nifti = np.asarray(_nifti(nifti).dataobj)
    assert mask_nifti.shape == tuple(reversed(stored.shape))
    seg = hd.seg.segread(seg_path)
    assert seg.get("Modality") == "SEG" and seg.SeriesInstanceUID != series.series_uid
    assert [d.segment_label for d in seg.SegmentSequence] == ["lesion"]
    frames = seg.get_pixels_by_source_instance(
        list(series.sop_instance_uids), combine_segments=True
    )
    assert np.array_equal(frames, np.transpose(mask_nifti, (2, 1, 0)))
    # The SEG is a mask of the same lesion the training label marks.
    overlap = (frames > 0) & (np.transpose(label, (2, 1, 0)) > 0)
    assert overlap.sum() > 0


def test_bad_inputs_fail_one_by_one_and_the_rest_go_on(run_2d: TrainedRun, tmp_path: Path) -> None:
    out = tmp_path / "model"
    export_model(run_2d.run_dir, out, "torchscript", manifest=run_2d.manifest)
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), volume)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    text = tmp_path / "notes.txt"
    text.write_text("x")
    images = [volume, run_2d.images[0], broken, text, tmp_path / "missing.nii.gz"]
    report = predict_images(ExportedModel.load(out, CPU), images, tmp_path / "pred")
    assert len(report.written) == 1
    assert "3D image with 8 slices, but the model is 2D" in report.failed[str(volume)]
    assert "not a readable NIfTI" in report.failed[str(broken)]
    assert "not an image predict reads" in report.failed[str(text)]
    assert "not found" in report.failed[str(tmp_path / "missing.nii.gz")]
    result = CliRunner().invoke(
        build_app(),
        ["predict", str(out), str(volume), str(run_2d.images[1]), "--out", str(tmp_path / "cli")],
    )
    assert result.exit_code == 1
    assert (tmp_path / "cli" / "case-01_seg.nii.gz").is_file()


def test_export_refuses_unfinished_runs_unless_a_round_is_named(tmp_path: Path) -> None:
    images, labels = write_cases(tmp_path / "cases", [(20, 20)], (1.0, 1.0))
    run = trained_run(
        tmp_path,
        images,
        labels,
        PreprocessSettings(spatial_size=(16, 16)),
        UNET_2D,
        steps=1,
        status="failed",
    )
    with pytest.raises(ConsortiaError, match=r"the run is failed \(site lost\); pass --round 1"):
        export_model(run.run_dir, tmp_path / "a", "torchscript", manifest=run.manifest)
    result = export_model(
        run.run_dir, tmp_path / "b", "torchscript", round_number=1, manifest=run.manifest
    )
    assert result.note == "the run is failed; exported round 1 (last recorded: 1)"
    card = json.loads((tmp_path / "b" / CARD_FILE).read_text())
    assert card["source"]["note"] == result.note and card["source"]["run_status"] == "failed"
    with pytest.raises(ConsortiaError, match="no checkpoint of round 5"):
        export_model(
            run.run_dir, tmp_path / "c", "torchscript", round_number=5, manifest=run.manifest
        )
    with pytest.raises(ConsortiaError, match="record no preprocessing plan: pass --manifest"):
        export_model(run.run_dir, tmp_path / "d", "torchscript", round_number=1)
    with pytest.raises(ConsortiaError, match="already exists and is not empty"):
        export_model(
            run.run_dir, tmp_path / "b", "torchscript", round_number=1, manifest=run.manifest
        )
    checkpoint = run.run_dir / "checkpoints" / "round-001.pt"
    checkpoint.write_bytes(checkpoint.read_bytes() + b"x")
    with pytest.raises(ConsortiaError, match="altered or damaged"):
        export_model(
            run.run_dir, tmp_path / "e", "torchscript", round_number=1, manifest=run.manifest
        )
    assert not (tmp_path / "e").exists() and not (tmp_path / "a").exists()


def test_a_manifest_that_does_not_fit_the_model_is_refused(
    run_2d: TrainedRun, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        "[dataset]\nlabels = { 0 = 'bg', 1 = 'a', 2 = 'b' }\n"
        "[preprocess]\nspatial_size = [24, 24]\n"
    )
    with pytest.raises(
        ConsortiaError, match=r"values \['0', '1', '2'\], but the run's model has 2 outputs"
    ):
        export_model(run_2d.run_dir, tmp_path / "x", "torchscript", manifest=manifest)
    manifest.write_text("[preprocess]\nspatial_size = [24, 24, 24]\n")
    with pytest.raises(ConsortiaError, match="the run's model is 2D"):
        export_model(run_2d.run_dir, tmp_path / "y", "torchscript", manifest=manifest)
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def test_a_planned_run_exports_its_plan_and_predict_applies_it(tmp_path: Path) -> None:
    """[run.plan]: orientation (the files are A-L-S, the plan RAS), foreground crop,
    MR z-score, pad, Gaussian sliding windows; masks come back on each file's grid."""
    shapes = [(20, 18, 16), (20, 18, 16)]
    images, labels = write_cases(tmp_path / "cases", shapes, (1.0, 1.2, 2.0))
    plan = PlanSettings(
        target_spacing=(1.0, 1.2, 2.0), spatial_size=(18, 20, 16), patch_size=(16, 16, 16)
    )
    preprocess = PreprocessSettings(spatial_size=(18, 20, 16))
    run = trained_run(tmp_path, images, labels, preprocess, UNET_3D, plan=plan)
    out = tmp_path / "model"
    export_model(run.run_dir, out, "torchscript")  # the plan is the preprocessing
    card = json.loads((out / CARD_FILE).read_text())
    assert card["preprocessing"]["plan"]["orientation"] == "RAS"
    assert card["inference"] == {
        "roi_size": [16, 16, 16],
        "overlap": 0.5,
        "mode": "gaussian",
        "sw_batch_size": 4,
    }
    report = predict_images(ExportedModel.load(out, CPU), images, tmp_path / "pred")
    assert not report.failed
    accumulator = SegmentationMetricAccumulator(num_classes=2, surface_distances=False)
    for image, label, mask in zip(images, labels, report.written, strict=True):
        assert _nifti(mask).shape == _nifti(image).shape
        _, predicted = prepared_case(image, mask, preprocess, plan)
        _, target = prepared_case(image, label, preprocess, plan)
        accumulator.update(torch.from_numpy(predicted)[None], torch.from_numpy(target)[None])
    dice = site_metrics(Task.SEGMENTATION, accumulator.summary(), {})["dice"]
    assert abs(dice - run.metrics["dice"]) <= 1e-4


def test_classification_writes_a_csv_of_scores(tmp_path: Path) -> None:
    """A 2D ResNet run (weights as initialised): scores.csv holds the softmax of the
    checkpoint's own network on each prepared, z-scored PNG."""
    from PIL import Image

    from consortia.client.training.trainer import normalize_images
    from consortia.common.config.settings import ModelConfig, RunSettings
    from consortia.common.networks.models import build_model
    from consortia.server.run.folder import RunFolder

    model: dict[str, Any] = {
        "architecture": "resnet18",
        "conv1_kernel": 3,
        "conv1_stride": 1,
        "no_max_pool": True,
    }
    settings = RunSettings(task=Task.CLASSIFICATION, model=ModelConfig(**model))
    torch.manual_seed(0)
    network = build_model(settings.model.to_model_settings()).eval()
    header = {
        "run_name": "cls",
        "task": "classification",
        "settings": settings.model_dump(mode="json"),
    }
    run = RunFolder(tmp_path / "run", header)
    relative, digest = run.checkpoint(1, network.state_dict())
    run.update_round(1, checkpoint=relative, model_sha256=digest)
    run.finish("completed")
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        "[dataset]\nlabels = { 0 = 'normal', 1 = 'pneumonia' }\n"
        "[preprocess]\nspatial_size = [28, 28]\n"
    )
    export_model(tmp_path / "run", tmp_path / "model", "torchscript", manifest=manifest)
    rng = np.random.default_rng(0)
    pngs = []
    for index, size in enumerate([(28, 28), (32, 30)]):
        pngs.append(tmp_path / f"xray-{index}.png")
        Image.fromarray(rng.integers(0, 255, size=size, dtype=np.uint8)).save(pngs[-1])
    report = predict_images(ExportedModel.load(tmp_path / "model", CPU), pngs, tmp_path / "out")
    assert not report.failed and report.written == [tmp_path / "out" / "scores.csv"]
    rows = report.written[0].read_text().splitlines()
    assert rows[0] == "image,prediction,normal,pneumonia"
    name, _, normal, pneumonia = rows[1].split(",")
    image = torch.from_numpy(np.asarray(Image.open(pngs[0]), dtype=np.float32))[None, None]
    with torch.no_grad():
        expected = torch.softmax(network(normalize_images(image)), dim=1)[0]
    assert name == "xray-0.png"
    assert abs(float(normal) - float(expected[0])) < 1e-5
    assert abs(float(pneumonia) - float(expected[1])) < 1e-5
