"""The data commands of docs/guide-hospital-it.md, run as written on a generated PACS
export (patients with two series each, a SEG, an RTSTRUCT and identifiers):
data deidentify -> data init -> data check -> node check (no server: unreachable) ->
node approve of a matching and of a mismatching study."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.builders import TomlValue, run_toml, site_toml
from tests.support.cli import consortia, output_of
from tests.support.dicom_export import write_pacs_export

MODEL: dict[str, TomlValue] = {
    "architecture": "unet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
}
MODEL |= {"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm_groups": 2}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_guide_from_pacs_export_to_approval(tmp_path: Path) -> None:
    export = write_pacs_export(tmp_path / "export", patients=4)
    run = consortia("data", "deidentify", export.root, tmp_path / "deid")
    assert run.returncode == 0, output_of(run)

    manifest = tmp_path / "site" / "manifest.toml"
    run = consortia("data", "init", tmp_path / "deid", "--out", manifest, "--hashed-ids")
    assert run.returncode == 0, output_of(run)
    assert "8 case(s)" in output_of(run)
    assert 'labels = { 0 = "background", 1 = "liver", 2 = "lesion" }' in manifest.read_text()

    run = consortia("data", "check", manifest)
    text = output_of(run)
    assert run.returncode == 0, text
    assert "8 OK, 0 left out, 8 in all" in " ".join(text.split())
    assert "PAT-0" not in text and str(tmp_path) not in text  # ids only, no paths

    ca, keys = tmp_path / "pki" / "ca", tmp_path / "pki" / "site"
    assert consortia("certs", "init", "--dir", ca).returncode == 0
    assert consortia("certs", "site", "hospital-a", "--out", keys).returncode == 0
    node: dict[str, TomlValue] = {
        "superlink": f"127.0.0.1:{_free_port()}",
        "root_certificates": str(ca / "ca.pem"),
        "key": str(keys / "hospital-a.key"),
        "state_dir": str(tmp_path / "state"),
        "device": "cpu",
    }
    site = tmp_path / "site" / "site.toml"
    site.write_text(site_toml("hospital-a", data="manifest.toml", node=node))
    run = consortia("node", "check", "--site-config", site)
    text = " ".join(output_of(run).split())
    assert run.returncode == 1, text
    assert "server unreachable" in text
    assert "8 of 8 case(s) read, cache warm" in text

    good = tmp_path / "run.toml"
    good.write_text(run_toml("liver", model=MODEL, privacy={"target_epsilon": 5.0}))
    run = consortia("node", "approve", good, "--site-config", site)
    assert run.returncode == 0, output_of(run)
    assert "Approved study liver" in output_of(run)

    bad = tmp_path / "bad.toml"
    bad_model = MODEL | {"spatial_dims": 2}
    bad.write_text(run_toml("bad", model=bad_model, privacy={"target_epsilon": 50.0}))
    run = consortia("node", "approve", bad, "--site-config", site)
    text = " ".join(output_of(run).split())
    assert run.returncode != 0, text
    assert "not approved" in text and "model is 2D" in text and "target_epsilon = 50" in text
