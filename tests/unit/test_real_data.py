"""The real-data configs in configs/real: simulated sites of PneumoniaMNIST and MSD
Hippocampus. Config validity needs no data; loading and checking the sites needs the public
data sets in ../shared/data and is skipped, with the reason, when they are absent."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from consortia.client.data.dataset import SiteDataset
from consortia.client.data.manifest import load_manifest
from consortia.common.config.settings import Role, Task, load_run_settings, load_site_settings

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "configs" / "real"
SHARED_DATA = REPO.parent / "shared" / "data"
SITES = ("a", "b", "c", "holdout")
RUNS = {"pneumoniamnist": "run-pneumoniamnist.toml", "hippocampus": "run-hippocampus.toml"}


def _needs(folder: str) -> None:
    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"real data set not present: {SHARED_DATA / folder} (see ../shared/data)")


@pytest.mark.parametrize("dataset", sorted(RUNS))
def test_site_and_run_configs_agree(dataset: str) -> None:
    run = load_run_settings(REAL / RUNS[dataset])
    roles = []
    for site in SITES:
        settings = load_site_settings(REAL / dataset / f"site-{site}.toml")
        roles.append(settings.site.role)
        mf = load_manifest(settings.data.path)
        info, preprocess = mf.manifest.dataset, mf.manifest.preprocess
        assert info.task is run.task and settings.site.name == info.name
        assert len(preprocess.spatial_size) == run.model.spatial_dims
        assert preprocess.channels == run.model.in_channels
        assert info.labels is not None and len(info.labels) == run.model.out_channels
        if run.model.architecture == "unet":
            step = math.prod(run.model.strides)
            assert all(size % step == 0 for size in preprocess.spatial_size)
        assert "SIMULATED" in mf.data.decode()  # documented as simulated sites
    assert roles == [Role.TRAIN, Role.TRAIN, Role.TRAIN, Role.HOLDOUT]
    assert run.min_sites == len(SITES)


def _open_sites(dataset: str, cache: Path) -> dict[str, SiteDataset]:
    return {
        site: SiteDataset.open(REAL / "manifests" / f"{dataset}-{site}.toml", cache_dir=cache)
        for site in SITES
    }


def test_pneumoniamnist_sites(tmp_path: Path) -> None:
    _needs("pneumoniamnist")
    sites = _open_sites("pneumoniamnist", tmp_path)
    ids = {name: {case.id for case in site.cases} for name, site in sites.items()}
    names = list(ids)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not ids[first] & ids[second], (first, second)
    # the held-out site and site c take every 4th case whole: a quarter of 5,856
    assert len(ids["holdout"]) == len(ids["c"]) == 1464
    fingerprints = {site.fingerprint for site in sites.values()}
    assert len(fingerprints) == 4
    shares = {}
    for name, site in sites.items():
        report = site.check()
        assert report.usable and report.summary.failed == 0, report.reasons
        data = site.load(Task.CLASSIFICATION, ("train", "val", "test"))
        assert data.images.shape == (len(ids[name]), 1, 28, 28)
        assert data.images.dtype == np.float32 and np.isfinite(data.images).all()
        assert set(np.unique(data.targets)) == {0, 1}
        shares[name] = float(data.targets.mean())
        assert site.count(Task.CLASSIFICATION, ("train",)) == report.summary.per_split["train"]
    # label skew by selection: a is about half pneumonia, b about 90%, c/holdout ~74%
    assert 0.4 < shares["a"] < 0.6 and shares["b"] > 0.85
    assert 0.68 < shares["c"] < 0.8 and 0.68 < shares["holdout"] < 0.8


def test_hippocampus_sites(tmp_path: Path) -> None:
    _needs("hippocampus")
    sites = _open_sites("hippocampus", tmp_path)
    # the public split (warm starts, issue 18): the first 48 positions less the held-out's
    sites["public"] = SiteDataset.open(
        REAL / "manifests" / "hippocampus-public.toml", cache_dir=tmp_path
    )
    ids = {name: {case.id for case in site.cases} for name, site in sites.items()}
    assert sum(len(v) for v in ids.values()) == 208
    assert len(set().union(*ids.values())) == 208  # disjoint and complete
    sizes = {"a": 40, "b": 40, "c": 40, "holdout": 52, "public": 36}
    means = {}
    for name, site in sites.items():
        report = site.check()  # reads every volume and, with a cache folder, caches them
        assert report.usable and report.summary.failed == 0, report.reasons
        assert report.summary.passed == len(ids[name]) == sizes[name]
        splits = {"train"} if name == "public" else {"train", "val", "test"}
        assert set(report.summary.per_split) == splits
        data = site.load(Task.SEGMENTATION, ("train", "val", "test"))
        assert data.images.shape == (sizes[name], 1, 40, 56, 40)
        assert data.targets.shape == (sizes[name], 40, 56, 40)
        assert set(np.unique(data.targets)) == {0, 1, 2}
        means[name] = float(data.images.mean())
        assert site.cases_read == sizes[name]  # check filled the cache; load used it
    assert len({round(m, 3) for m in means.values()}) == 5
