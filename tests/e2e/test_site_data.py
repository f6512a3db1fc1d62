"""Registered site data through the real runtime: nodes whose data sets are manifests
over DICOM series (a de-identified copy), PNG files and an npz archive train and
evaluate together; a node whose DICOM still carries identifiers is refused by its own
PHI guard, and the server leaves it out without learning why in detail. The run also
adds client-level DP at the server (Flower's wrapper) on top of the sites' DP-SGD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consortia.client.data.dataset import SiteDataset
from consortia.client.data.dicom.deidentify import deidentify_tree
from consortia.server.run.folder import EVENTS_FILE
from tests.support.builders import run_toml
from tests.support.cli import consortia
from tests.support.cli_federation import CliFederation
from tests.support.dicom_factory import write_series
from tests.support.federation import SiteSpec, add_sites

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SIZE = 32
CASES = 12


# Classification on every kind of data set, with DP-SGD at the sites and client-level DP
# at the server on top.
RUN = run_toml(
    "site-data",
    task="classification",
    min_sites=4,
    model={
        "architecture": "resnet18",
        "conv1_kernel": 3,
        "conv1_stride": 2,
        "norm_groups": 8,
    },
    training={"batch_size": 4},
    privacy={"noise_multiplier": 1.0},
    # client-level DP at the server on top: Flower's clipping wrapper and accountant
    tables={
        "central_privacy": {
            "enabled": True,
            "noise_multiplier": 0.5,
            "clipping_norm": 5.0,
        }
    },
)


def _pixels(index: int) -> np.ndarray:
    """A bright or a dark square on noise: class = index % 2."""
    rng = np.random.default_rng(index)
    image = rng.integers(0, 400, (SIZE, SIZE))
    image[8:24, 8:24] += 1200 if index % 2 else 0
    return image.astype(np.uint16)


def _manifest(folder: Path, name: str, images: list[str]) -> Path:
    lines = [
        f'[dataset]\nname = "{name}"\ntask = "classification"\n',
        f"[preprocess]\nspatial_size = [{SIZE}, {SIZE}]\nchannels = 1\n",
    ]
    for index, image in enumerate(images):
        split = "train" if index < CASES - 4 else "test"
        lines.append(
            f'[[case]]\nid = "case-{index}"\nsplit = "{split}"\nimage = {image}\n'
            f"label = {{ class = {index % 2} }}\n"
        )
    manifest = folder / "manifest.toml"
    manifest.write_text("\n".join(lines), encoding="utf-8")
    return manifest


def _dicom_site(root: Path, *, deidentified: bool) -> Path:
    raw = root / "raw"
    for index in range(CASES):
        write_series(
            raw / f"case-{index}",
            n_slices=1,
            rows=SIZE,
            columns=SIZE,
            stored=_pixels(index)[None],
            patient_id=f"MRN-{index:05d}",
            patient_name=f"Patient^Number{index}",
            seed=index,
        )
    source = raw
    if deidentified:
        source = root / "dicom"
        report = deidentify_tree(raw, source)
        assert report.files_written == CASES and not report.problems
    images = [f'{{ dicom = "{source.name}/case-{i}" }}' for i in range(CASES)]
    return _manifest(root, root.name, images)


def _png_site(root: Path) -> Path:
    (root / "png").mkdir(parents=True)
    for index in range(CASES):
        pixels = (_pixels(index + 100) // 8).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "png" / f"case-{index}.png")
    images = [f'{{ png = "png/case-{i}.png" }}' for i in range(CASES)]
    return _manifest(root, root.name, images)


def _check(manifest: Path) -> tuple[int, dict]:
    result = consortia("data", "check", manifest, "--json", timeout=300)
    return result.returncode, json.loads(result.stdout)


def test_manifest_data_sets_train_and_phi_is_refused(
    tmp_path: Path, federation: CliFederation
) -> None:
    north = _dicom_site(tmp_path / "north", deidentified=True)
    south = _png_site(tmp_path / "south")
    west = _dicom_site(tmp_path / "west", deidentified=False)

    assert _check(north)[0] == 0
    code, report = _check(west)
    assert code == 1
    assert not report["usable"]
    assert "MRN-" not in json.dumps(report)  # findings name attributes, never values

    federation.start_server()
    add_sites(
        federation,
        [
            SiteSpec("north", data=north.name, privacy=None),
            SiteSpec("south", data=south.name, privacy=None),
            SiteSpec("west", data=west.name, privacy=None),
            SiteSpec("east", role="holdout", index=3, train_cases=8, privacy=None),
        ],
    )
    results = federation.run("site-data", RUN)
    assert results["status"] == "completed"
    assert {s["name"] for s in results["sites"]} == {"north", "south", "east"}
    events = [json.loads(line) for line in (results["dir"] / EVENTS_FILE).open()]
    refused = [e for e in events if e["event"] == "site_refused"]
    assert len(refused) == 1 and "site data unusable" in refused[0]["reason"]
    assert "MRN-" not in (results["dir"] / EVENTS_FILE).read_text()
    rounds = {entry["round"]: entry for entry in results["rounds"]}
    assert rounds[2]["participants"] == ["north", "south"]
    assert rounds[2]["train"]["north"]["examples"] == CASES - 4
    assert rounds[2]["evaluation"]["sites"]["north"]["cases"] == 4
    central = results["privacy"]["central"]
    assert central["enabled"] and central["rounds_released"] == 2
    assert central["epsilon"] > 0
    assert all(rounds[r]["central_privacy"]["released"] for r in (1, 2))

    # The fingerprint the server recorded is the manifest data set's; the node cached
    # the preprocessed arrays and keeps its privacy ledger under that fingerprint.
    fingerprint = SiteDataset.open(north).fingerprint
    [north_site] = [s for s in results["sites"] if s["name"] == "north"]
    assert north_site["data_fingerprint"] == fingerprint
    state = north.parent / "state"
    assert (state / "privacy" / f"{fingerprint}.json").is_file()
    assert any((state / "data-cache").rglob("*.npz"))
    # The refused node's log says why, at the site.
    assert "identif" in (west.parent / "node.log").read_text().lower() or any(
        "identif" in p.read_text().lower() for p in (west.parent / "state" / "logs").glob("*")
    )
