"""Run identity: the config hash is the same at the site (RUN.toml) and on the wire (the
server's run config), changes with any study setting; the app hash covers the code."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from consortia.common.config.settings import load_run_settings, run_settings_from_json
from consortia.common.wire import records as rk
from consortia.common.wire.run_identity import (
    RunIdentity,
    app_hash,
    app_hash_details,
    config_hash,
    hash_package_files,
    package_roots,
)
from consortia.server.launch.submit import write_app_dir

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

RUN_TOML = """\
[run]
name = "lesion-seg"
task = "segmentation"
rounds = 10
min_sites = 3
sites_per_round = 0
seed = 0
connect_timeout_s = 300
round_timeout_s = 1800
surface_metrics = "final"

[run.model]
architecture = "unet"
spatial_dims = 2
in_channels = 1
out_channels = 2
channels = [16, 32, 64, 128]
strides = [2, 2, 2]
num_res_units = 0
norm_groups = 8

[run.training]
local_epochs = 2
batch_size = 16
learning_rate = 0.002

[run.privacy]
target_epsilon = 8.0
max_grad_norm = 1.0
accountant = "rdp"
"""


def _write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _replace(text: str, line: str, new: str) -> str:
    if line not in text:
        raise ValueError(f"test template has no line {line!r}")
    return text.replace(line, new, 1)


def test_site_toml_and_server_run_config_give_one_hash(tmp_path: Path) -> None:
    at_site = load_run_settings(_write(tmp_path, RUN_TOML))
    digest = config_hash(at_site)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    # What the server parses: the settings JSON, carried as a TOML string in the app's
    # pyproject (the Flower run config), for a timestamped run name.
    app_dir = write_app_dir(tmp_path / "app", at_site, "lesion-seg-20250101-000000")
    with (app_dir / "pyproject.toml").open("rb") as handle:
        run_config = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    on_wire = run_settings_from_json(run_config[rk.RUN_CONFIG_SETTINGS])
    assert config_hash(on_wire) == digest
    assert config_hash(run_settings_from_json(at_site.to_json())) == digest


def test_another_submission_of_the_study_has_the_same_hash(tmp_path: Path) -> None:
    settings = load_run_settings(_write(tmp_path, RUN_TOML))
    hashes = set()
    for run_name in ("lesion-seg-20250101-000000", "lesion-seg-20250202-120000"):
        app_dir = write_app_dir(tmp_path / run_name, settings, run_name)
        with (app_dir / "pyproject.toml").open("rb") as handle:
            text = tomllib.load(handle)["tool"]["flwr"]["app"]["config"][rk.RUN_CONFIG_SETTINGS]
        hashes.add(config_hash(run_settings_from_json(text)))
    assert hashes == {config_hash(settings)}


def test_layout_of_the_toml_does_not_matter(tmp_path: Path) -> None:
    base = config_hash(load_run_settings(_write(tmp_path, RUN_TOML)))
    variant = RUN_TOML
    # Same values written differently: float spelling, an explicit default, a comment.
    variant = _replace(variant, "learning_rate = 0.002", "learning_rate = 2e-3  # same")
    variant = _replace(variant, "connect_timeout_s = 300", "connect_timeout_s = 300.0")
    variant = _replace(variant, 'accountant = "rdp"', 'accountant = "rdp"\nenabled = true')
    # Keys in another order inside a table.
    variant = _replace(variant, "rounds = 10\nmin_sites = 3", "min_sites = 3\nrounds = 10")
    assert config_hash(load_run_settings(_write(tmp_path, variant, "variant.toml"))) == base


@pytest.mark.parametrize(
    ("line", "new"),
    [
        ('name = "lesion-seg"', 'name = "lesion-seg-2"'),
        ("rounds = 10", "rounds = 11"),
        ("seed = 0", "seed = 1"),
        ("local_epochs = 2", "local_epochs = 3"),
        ("batch_size = 16", "batch_size = 32"),
        ("learning_rate = 0.002", "learning_rate = 0.0021"),
        ("target_epsilon = 8.0", "target_epsilon = 8.5"),
        ("target_epsilon = 8.0", "noise_multiplier = 1.1"),
        ("max_grad_norm = 1.0", "max_grad_norm = 2.0"),
        ('accountant = "rdp"', 'accountant = "prv"'),
        ('accountant = "rdp"', 'accountant = "rdp"\nenabled = false'),
        ("channels = [16, 32, 64, 128]", "channels = [16, 32, 64, 256]"),
        ("num_res_units = 0", "num_res_units = 1"),
        ("out_channels = 2", "out_channels = 3"),
        ("[run.privacy]", "[run.central_privacy]\nenabled = true\n\n[run.privacy]"),
    ],
)
def test_any_study_change_changes_the_hash(tmp_path: Path, line: str, new: str) -> None:
    base = config_hash(load_run_settings(_write(tmp_path, RUN_TOML)))
    changed = load_run_settings(_write(tmp_path, _replace(RUN_TOML, line, new), "changed.toml"))
    assert config_hash(changed) != base


def test_shipped_configs_have_distinct_hashes() -> None:
    hashes = {
        config_hash(load_run_settings(CONFIGS / name))
        for name in ("run-segmentation.toml", "run-classification.toml")
    }
    assert len(hashes) == 2


def _package(root: Path) -> Path:
    pkg = root / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""pkg."""\n')
    (pkg / "a.py").write_text("A = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("B = 2\n")
    return pkg


def test_package_hash_is_stable_and_follows_the_code(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    first = hash_package_files([pkg], "1.0")
    assert hash_package_files([pkg], "1.0") == first
    assert re.fullmatch(r"[0-9a-f]{64}", first)

    # Not code: caches and other files are ignored.
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.py").write_text("stale")
    (pkg / "py.typed").write_text("")
    (pkg / "notes.txt").write_text("x")
    assert hash_package_files([pkg], "1.0") == first

    assert hash_package_files([pkg], "1.1") != first  # another version

    (pkg / "sub" / "b.py").write_text("B = 3\n")  # a changed file
    changed = hash_package_files([pkg], "1.0")
    assert changed != first
    (pkg / "sub" / "b.py").write_text("B = 2\n")
    assert hash_package_files([pkg], "1.0") == first  # the content is what counts

    (pkg / "sub" / "b.py").rename(pkg / "sub" / "c.py")  # same bytes, other name
    assert hash_package_files([pkg], "1.0") != first
    (pkg / "sub" / "c.py").rename(pkg / "sub" / "b.py")

    (pkg / "sub" / "extra.py").write_text("")  # an added module
    assert hash_package_files([pkg], "1.0") != first


def test_package_hash_covers_every_root(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "m.py").write_text("M = 1\n")
    both = hash_package_files([pkg, other], "1.0")
    assert both != hash_package_files([pkg], "1.0")
    (other / "m.py").write_text("M = 2\n")
    assert hash_package_files([pkg, other], "1.0") != both


def test_app_hash_is_the_installed_code() -> None:
    digest = app_hash()
    assert app_hash() == digest
    details = app_hash_details()
    assert details["app_hash"] == digest
    assert details["version"] == version("consortia")
    roots = package_roots()
    assert [root.name for root in roots] == ["common", "client", "server"]
    assert (roots[0] / "wire" / "run_identity.py").is_file()
    assert details["files"] > 10
    assert hash_package_files(roots, version("consortia")) == digest


def test_run_identity_short(tmp_path: Path) -> None:
    settings = load_run_settings(_write(tmp_path, RUN_TOML))
    identity = RunIdentity.of(settings)
    assert identity == RunIdentity(config_hash(settings), app_hash())
    assert identity.short() == (
        f"config {identity.config_hash[:12]} / app {identity.app_hash[:12]}"
    )
    assert RunIdentity.of(settings, app="f" * 64).app_hash == "f" * 64
