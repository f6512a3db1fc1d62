"""Red-team F4 (evaluation oracle): what a classification site sends about its test
split. The server chooses the weights a site evaluates, so it chooses each case's score;
with 1000 equal score bins per class and true label, every case of a small split sat in
a bin of its own and the histogram read back each case's score to 1e-3, with its label.
The site now sends `AUC_BINS` (64) coarse bins (`auc_bin_edges`), and the AUC the server
computes from them stays within the documented tolerance on real held-out data
(PneumoniaMNIST; tests/benchmarks/auc_bins.py measures the whole grid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from consortia.common.metrics.base import AUC, positive_histogram_key
from consortia.common.metrics.classification import (
    AUC_BIN_TOLERANCE,
    AUC_BINS,
    ClassificationMetricAccumulator,
    auc_bin_edges,
    compute_classification_summary,
    finalize_classification,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pneumoniamnist"


def _probs(scores: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([1.0 - scores, scores], axis=1))


def test_f4_a_chosen_model_no_longer_reads_each_case_score_from_the_histograms() -> None:
    """A server-chosen model gives each of 40 positive cases a score that encodes one of
    its features (here: evenly spread over [0.30, 0.70]); what the site sends must not
    let the server read them back case by case."""
    secret = np.linspace(0.30, 0.70, 40)
    site = ClassificationMetricAccumulator(2)  # what the site's evaluation uses
    site.update(_probs(secret), torch.ones(40, dtype=torch.long))
    sent = np.asarray(site.histograms()[positive_histogram_key(1)])
    assert sent.size == AUC_BINS <= 64
    assert np.count_nonzero(sent) <= 20, "each case sat in a bin of its own"
    assert sent.max() >= 2
    # the server's best reading of each case (its bin's centre) is off by up to half a bin
    edges = np.concatenate([[0.0], auc_bin_edges(), [1.0]])
    index = np.searchsorted(auc_bin_edges(), secret, side="right")
    readback = (edges[index] + edges[index + 1]) / 2
    assert np.max(np.abs(readback - secret)) > 0.005


def test_f4_the_edges_are_sorted_and_cover_both_tails() -> None:
    edges = auc_bin_edges()
    assert edges.size == AUC_BINS - 1 and np.all(np.diff(edges) > 0)
    assert edges[0] < 1e-4 and edges[-1] > 1 - 1e-4  # confident scores still ranked
    with pytest.raises(ValueError, match="logit_range"):
        auc_bin_edges(48, 8, 1.0)


@pytest.mark.skipif(not DATA.is_dir(), reason="PneumoniaMNIST is not in ../shared/data")
def test_f4_the_coarse_bins_keep_the_auc_within_tolerance_on_held_out_data() -> None:
    arrays = np.load(DATA / "pneumoniamnist.npz")
    x = arrays["train_images"][:, ::2, ::2].reshape(len(arrays["train_images"]), -1) / 255.0
    xt = arrays["test_images"][:, ::2, ::2].reshape(len(arrays["test_images"]), -1) / 255.0
    y, yt = arrays["train_labels"].ravel(), arrays["test_labels"].ravel().astype(np.int64)
    logits = LogisticRegression(C=0.01, max_iter=200).fit(x, y).decision_function(xt)
    for temperature in (1.0, 4.0):  # a confident and a less confident model
        scores = (1 / (1 + np.exp(-logits / temperature))).astype(np.float32).astype(float)
        summary, histograms = compute_classification_summary(_probs(scores), torch.from_numpy(yt))
        binned = finalize_classification(summary, histograms)[AUC]
        assert abs(binned - roc_auc_score(yt, scores)) <= AUC_BIN_TOLERANCE
