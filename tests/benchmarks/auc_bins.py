"""AUC error of the score histograms a site sends, against the exact AUC (red-team F4).

A classification site sends, per class and true label, a histogram of its scores; the
server computes the AUC from the summed histograms (ties within a bin count 1/2). Fewer
bins leave less per case for a server-chosen model to read, and cost AUC accuracy. This
measures that cost on real data: logistic regressions on PneumoniaMNIST's train split
(three regularisations), scored on its held-out test split (624 cases) and on three
site-sized thirds of it, with the logits scaled by a temperature (0.25, 1, 4) to mimic
over-confident and under-confident models. For each binning it records
|AUC from bins - exact AUC|: the site's (`ClassificationMetricAccumulator()`, logit-even
bins: 48 equal ones with logit-even tails), equal bins over [0, 1] (1000 was sent
before) and 64 bins even in the logit. "Exact" is the AUC of the float32 probabilities
the site holds (saturated scores tie there too)::

    python -m tests.benchmarks.auc_bins --output docs/benchmarks/auc_bins-2026-12-07.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from consortia.common.metrics.base import AUC
from consortia.common.metrics.classification import (
    AUC_BINS,
    auc_bin_edges,
    compute_classification_summary,
    finalize_classification,
)

__all__ = ["binned_auc", "main", "measure"]

logger = logging.getLogger("tests.benchmarks.auc_bins")

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist.npz"
REGULARISATION = (1e-4, 1e-2, 1.0)
TEMPERATURES = (0.25, 1.0, 4.0)
UNIFORM = (64, 100, 1000)
LOGIT = ((64, 8.0), (64, 12.0))  # bins even in the logit over [-range, range]


def binned_auc(labels: np.ndarray, scores: np.ndarray, edges: np.ndarray) -> float:
    """The AUC the server computes from bins with these inner edges (ties count 1/2)."""
    return float(roc_auc_score(labels, np.searchsorted(edges, scores, side="right")))


def _site_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The AUC through the site's own accumulator and the server's finalize."""
    probs = torch.from_numpy(np.stack([1.0 - scores, scores], axis=1))
    summary, histograms = compute_classification_summary(probs, torch.from_numpy(labels))
    return float(finalize_classification(summary, histograms)[AUC])


def _errors(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32).astype(np.float64)
    exact = float(roc_auc_score(labels, scores))
    out = {"exact_auc": exact, "site": abs(_site_auc(labels, scores) - exact)}
    for bins in UNIFORM:
        edges = np.linspace(0.0, 1.0, bins + 1)[1:-1]
        out[f"uniform_{bins}"] = abs(binned_auc(labels, scores, edges) - exact)
    for bins, spread in LOGIT:
        edges = 1.0 / (1.0 + np.exp(-np.linspace(-spread, spread, bins - 1)))
        out[f"logit_{bins}_{spread:g}"] = abs(binned_auc(labels, scores, edges) - exact)
    return out


def measure(data: Path = DATA) -> dict[str, Any]:
    """Every model x temperature x split: the exact AUC and each binning's error."""
    arrays = np.load(data)
    x = arrays["train_images"].reshape(len(arrays["train_images"]), -1) / 255.0
    y = arrays["train_labels"].ravel()
    xt = arrays["test_images"].reshape(len(arrays["test_images"]), -1) / 255.0
    yt = arrays["test_labels"].ravel().astype(np.int64)
    thirds = np.array_split(np.arange(len(yt)), 3)
    rows: list[dict[str, Any]] = []
    for c in REGULARISATION:
        model = LogisticRegression(C=c, max_iter=300).fit(x, y)
        logits = model.decision_function(xt)
        for temperature in TEMPERATURES:
            scaled = logits / temperature
            for split, index in [("test", np.arange(len(yt)))] + [
                (f"third_{i}", part) for i, part in enumerate(thirds)
            ]:
                row = {"C": c, "temperature": temperature, "split": split, "cases": len(index)}
                row |= {"min_logit": float(scaled[index].min())}
                row |= {"max_logit": float(scaled[index].max())}
                rows.append(row | _errors(yt[index], scaled[index]))
                logger.info("%s", rows[-1])
    keys = [k for k in rows[0] if k == "site" or k.startswith(("uniform_", "logit_"))]
    return {
        "benchmark": "auc_bins",
        "date": dt.date.today().isoformat(),
        "data": "PneumoniaMNIST (MedMNIST v2) test split, 624 cases; train split for the models",
        "site_binning": {"bins": AUC_BINS, "inner_edges": auc_bin_edges().tolist()},
        "max_error": {k: max(row[k] for row in rows) for k in keys},
        "max_error_test_split_T1": {
            k: max(row[k] for row in rows if row["split"] == "test" and row["temperature"] == 1.0)
            for k in keys
        },
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    """Measure and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("auc_bins.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.output.write_text(json.dumps(measure(), indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
