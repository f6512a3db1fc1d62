"""The classification recipe (issue 17 item 2): class weights from a site's own labels,
their loss in the per-example form DP-SGD needs, the X-ray augmentation, the run-settings
gate under DP, balanced accuracy (against scikit-learn) and the no-DP PneumoniaMNIST study
config. Real images from ../shared/data where a test says so (skipped when absent)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from consortia.client.data.dataset import SiteDataset
from consortia.client.data.site_data import SiteArrays
from consortia.client.training.augment import BatchAugmenter
from consortia.client.training.classification_recipe import (
    ClassificationAugmenter,
    ClassWeightedCrossEntropy,
    balanced_class_weights,
)
from consortia.client.training.trainer import RoundRecipe, train_local
from consortia.common.config.settings import RunSettings, Task, load_run_settings
from consortia.common.metrics.bootstrap import classification_replicates
from consortia.common.metrics.classification import (
    BALANCED_ACCURACY,
    BalancedAccuracyMetric,
    balanced_accuracy,
    compute_classification_summary,
    finalize_classification,
)
from consortia.common.networks.models import build_model

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "configs" / "real"
SHARED = REPO.parent / "shared" / "data" / "pneumoniamnist"


def _real_site(tmp_path: Path, site: str = "b") -> tuple[np.ndarray, np.ndarray]:
    if not SHARED.is_dir():
        pytest.skip(f"real data set not present: {SHARED} (see ../shared/data)")
    manifest = REAL / "manifests" / f"pneumoniamnist-{site}.toml"
    data = SiteDataset.open(manifest, cache_dir=tmp_path).load(Task.CLASSIFICATION, ("train",))
    return data.images, data.targets


# -- class weights and their loss --------------------------------------------------------


def test_balanced_weights_are_sklearns_and_average_one() -> None:
    labels = np.array([1] * 9 + [0] * 3)
    weights = balanced_class_weights(labels)
    assert weights == pytest.approx({0: 12 / (2 * 3), 1: 12 / (2 * 9)})
    assert np.mean([weights[int(y)] for y in labels]) == pytest.approx(1.0)
    assert balanced_class_weights(np.array([2, 2])) == {2: 1.0}  # one class present


@pytest.mark.parametrize(
    "labels, message",
    [(np.array([], dtype=np.int64), "at least one"), (np.array([0.5]), "integer")],
)
def test_balanced_weights_refuse_bad_labels(labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        balanced_class_weights(labels)


def test_weighted_loss_is_the_mean_of_per_example_losses() -> None:
    """DP-SGD's per-example clipping needs loss(batch) = mean of loss(example): torch's
    weighted CrossEntropyLoss divides by the sum of the batch's weights instead."""
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 2), torch.tensor([0, 1, 1, 1, 1, 1, 0, 1])
    loss = ClassWeightedCrossEntropy({0: 2.0, 1: 0.5})
    batch = loss(logits, targets)
    singles = torch.stack([loss(logits[i : i + 1], targets[i : i + 1]) for i in range(8)])
    assert float(batch) == pytest.approx(float(singles.mean()), rel=1e-6)
    loss.reduction = "none"  # as Opacus' ghost clipping sets it
    assert torch.allclose(loss(logits, targets), singles)
    torch_weighted = nn.CrossEntropyLoss(weight=torch.tensor([2.0, 0.5]))(logits, targets)
    assert float(torch_weighted) != pytest.approx(float(batch), rel=1e-3)
    unweighted = ClassWeightedCrossEntropy({0: 1.0, 1: 1.0})(logits, targets)
    assert float(unweighted) == pytest.approx(float(nn.CrossEntropyLoss()(logits, targets)))


def test_weighted_loss_pads_absent_classes_and_refuses_bad_weights() -> None:
    logits, targets = torch.randn(4, 3), torch.tensor([0, 0, 2, 2])
    # Only class 0 seen at the site: classes 1 and 2 weigh 1.
    padded = ClassWeightedCrossEntropy({0: 3.0})(logits, targets)
    full = ClassWeightedCrossEntropy({0: 3.0, 1: 1.0, 2: 1.0})(logits, targets)
    assert float(padded) == pytest.approx(float(full))
    with pytest.raises(ValueError, match="model has 3"):
        ClassWeightedCrossEntropy({5: 1.0})(logits, targets)
    with pytest.raises(ValueError, match="finite numbers > 0"):
        ClassWeightedCrossEntropy({0: math.nan})


def test_round_recipe_uses_the_sites_own_weights(tmp_path: Path) -> None:
    images, targets = _real_site(tmp_path, "b")  # about 90% pneumonia
    settings = load_run_settings(REAL / "run-pneumoniamnist-no-dp.toml")
    recipe = RoundRecipe.for_round(settings.training, 1, settings.rounds)
    loss = recipe.loss(Task.CLASSIFICATION, SiteArrays(images, targets))
    assert isinstance(loss, ClassWeightedCrossEntropy)
    weights = balanced_class_weights(targets)
    assert weights[0] > 3.0 > 0.6 > weights[1]  # normal is the site's minority class
    assert torch.allclose(loss.table, torch.tensor([weights[0], weights[1]]))
    assert not isinstance(recipe.loss(Task.SEGMENTATION, SiteArrays(images, targets)), type(loss))
    plain = RoundRecipe.constant(1e-3)
    assert isinstance(plain.loss(Task.CLASSIFICATION, SiteArrays(images, targets)), nn.Module)
    assert not isinstance(plain.loss(Task.CLASSIFICATION, SiteArrays(images, targets)), type(loss))


# -- augmentation ------------------------------------------------------------------------


def test_classification_augmenter_moves_images_reproducibly(tmp_path: Path) -> None:
    images, _ = _real_site(tmp_path, "c")
    batch = torch.from_numpy(images[:16]).float()
    first = ClassificationAugmenter([], seed=3)(batch)
    again = ClassificationAugmenter([], seed=3)(batch)
    assert first.shape == batch.shape and first.dtype == torch.float32
    assert torch.equal(first, again)
    changed = [not torch.allclose(a, b) for a, b in zip(first, batch, strict=True)]
    assert sum(changed) >= 8  # most examples moved (p = 0.8)
    empty = torch.zeros((0, *batch.shape[1:]))
    assert ClassificationAugmenter([], seed=0)(empty).shape == empty.shape


def test_batch_augmenter_gives_class_batches_the_affine_and_keeps_labels() -> None:
    """A horizontal edge moved off its row can come only from the affine: intensity
    transforms change values, never positions."""
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 14:, :] = 1.0
    batch, labels = image.repeat(32, 1, 1, 1), torch.arange(32) % 2
    augmented, out_labels = BatchAugmenter(intensity=True, flip_axes=(), seed=1)(batch, labels)
    assert torch.equal(out_labels, labels)
    profiles = augmented.mean(dim=(1, 3))  # (B, rows)
    edge_rows = (profiles[:, 1:] - profiles[:, :-1]).abs().argmax(dim=1)
    assert int((edge_rows != 13).sum()) >= 8
    untouched, _ = BatchAugmenter(intensity=False, flip_axes=(), seed=1)(batch, labels)
    assert torch.equal(untouched, batch)
    flipped, _ = BatchAugmenter(intensity=True, flip_axes=(0,), seed=1)(batch, labels)
    assert flipped.shape == batch.shape  # mirrors, when a study asks, still work


# -- settings ----------------------------------------------------------------------------


def test_balanced_weights_are_refused_under_dp() -> None:
    base = load_run_settings(REAL / "run-pneumoniamnist-no-dp.toml").model_dump()
    assert base["training"]["class_weights"] == "balanced"
    with pytest.raises(ValidationError, match="class_weights"):
        RunSettings.model_validate({**base, "privacy": {"enabled": True}})
    with pytest.raises(ValidationError, match="class_weights"):
        RunSettings.model_validate({**base, "training": {"class_weights": "inverse"}})
    shipped = load_run_settings(REAL / "run-pneumoniamnist.toml")
    assert shipped.privacy.enabled and shipped.training.class_weights == "none"


def test_short_training_with_the_recipe_runs_on_real_images(tmp_path: Path) -> None:
    images, targets = _real_site(tmp_path, "a")
    settings = load_run_settings(REAL / "run-pneumoniamnist-no-dp.toml")
    recipe = RoundRecipe.for_round(settings.training, 1, settings.rounds)
    torch.manual_seed(0)
    model = build_model(settings.model.to_model_settings())
    result = train_local(
        model,
        SiteArrays(images[:128], targets[:128]),
        Task.CLASSIFICATION,
        epochs=1,
        batch_size=64,
        learning_rate=1e-3,
        seed=0,
        device=torch.device("cpu"),
        recipe=recipe,
    )
    assert result.num_examples == 128 and math.isfinite(result.mean_loss)


# -- balanced accuracy -------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 3])
def test_balanced_accuracy_matches_sklearn(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    y = rng.integers(0, num_classes, 300)
    scores = rng.random((300, num_classes))
    scores[np.arange(300), y] += 0.4  # better than chance
    probs = torch.from_numpy(scores / scores.sum(axis=1, keepdims=True))
    expected = balanced_accuracy_score(y, scores.argmax(axis=1))
    metric = BalancedAccuracyMetric(num_classes)
    for part in np.array_split(np.arange(300), 7):  # batch by batch
        metric(probs[part], torch.from_numpy(y[part]))
    assert metric.aggregate() == pytest.approx(expected, abs=1e-12)
    summary, histograms = compute_classification_summary(probs, torch.from_numpy(y))
    final = finalize_classification(summary, histograms)
    assert final[BALANCED_ACCURACY] == pytest.approx(expected, abs=1e-12)
    metric.reset()
    assert math.isnan(metric.aggregate())


def test_balanced_accuracy_edge_cases_and_errors() -> None:
    # Class 2 never occurs: left out, as scikit-learn does (it warns).
    with pytest.warns(UserWarning):
        expected = balanced_accuracy_score([0, 0, 1, 1], [0, 2, 1, 1])
    assert balanced_accuracy([[1, 0, 1], [0, 2, 0], [0, 0, 0]]) == pytest.approx(expected)
    metric = BalancedAccuracyMetric(2)
    metric(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 0]))  # labels, not scores
    assert metric.aggregate() == pytest.approx(0.5)  # accuracy would say 0.75
    with pytest.raises(ValueError, match="square"):
        balanced_accuracy([[1, 2, 3]])
    with pytest.raises(ValueError, match="counts >= 0"):
        balanced_accuracy([[1, -1], [0, 1]])
    with pytest.raises(ValueError, match="labels in"):
        metric(torch.tensor([2]), torch.tensor([0]))
    with pytest.raises(TypeError):
        metric([0.1, 0.9], torch.tensor([0]))  # type: ignore[arg-type]


def test_balanced_accuracy_gets_a_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    scores = np.clip(y * 0.3 + rng.random(400) * 0.7, 0, 1)
    probs = torch.from_numpy(np.stack([1 - scores, scores], axis=1))
    sample = compute_classification_summary(probs, torch.from_numpy(y))
    point = finalize_classification(*sample)[BALANCED_ACCURACY]
    replicates = classification_replicates([sample], 400, np.random.default_rng(1))
    low, high = np.percentile(replicates[BALANCED_ACCURACY], [2.5, 97.5])
    assert low < point < high and high - low < 0.15
