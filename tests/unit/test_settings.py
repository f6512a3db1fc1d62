"""Run and site configs: valid files load, every kind of mistake names file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortia.common.config.settings import (
    Role,
    Task,
    load_run_settings,
    load_site_settings,
    run_settings_from_json,
)
from consortia.common.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["run-segmentation.toml", "run-classification.toml"])
def test_shipped_run_configs_are_valid(name: str) -> None:
    settings = load_run_settings(CONFIGS / name)
    assert settings.rounds >= 1
    settings.model.to_model_settings()  # builds through the factory's checks


def test_run_config_round_trips_through_json() -> None:
    settings = load_run_settings(CONFIGS / "run-classification.toml")
    assert run_settings_from_json(settings.to_json()) == settings
    assert settings.task is Task.CLASSIFICATION


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "run.toml", "[run]\nrounds = 3\nround = 4\n")
    with pytest.raises(ConfigError) as err:
        load_run_settings(path)
    assert "run.toml" in str(err.value)
    assert "round: unknown key" in str(err.value)


def test_nested_unknown_key_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "run.toml", "[run]\n[run.training]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"training\.epochs: unknown key"):
        load_run_settings(path)


def test_wrong_type_and_range_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "run.toml", '[run]\nrounds = "many"\n')
    with pytest.raises(ConfigError, match=r"rounds: .*integer"):
        load_run_settings(path)
    path = _write(tmp_path, "run2.toml", "[run]\nrounds = 0\n")
    with pytest.raises(ConfigError, match=r"rounds: .*greater than or equal to 1"):
        load_run_settings(path)
    path = _write(tmp_path, "run3.toml", '[run]\ntask = "regression"\n')
    with pytest.raises(ConfigError, match=r"task: "):
        load_run_settings(path)


def test_model_factory_checks_surface_at_load(tmp_path: Path) -> None:
    path = _write(tmp_path, "run.toml", "[run]\n[run.model]\nchannels = [6, 12]\nstrides = [2]\n")
    with pytest.raises(ConfigError, match="norm_groups"):
        load_run_settings(path)


def test_missing_table_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="run: required table is missing"):
        load_run_settings(_write(tmp_path, "empty.toml", "# nothing\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_settings(_write(tmp_path, "bad.toml", "[run\n"))
    with pytest.raises(ConfigError, match="unknown top-level table"):
        load_run_settings(_write(tmp_path, "extra.toml", "[run]\n[study]\n"))


def test_site_config_resolves_data_relative_to_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "site.npz").write_bytes(b"x")
    path = _write(
        tmp_path,
        "site.toml",
        '[site]\nname = "hospital-a"\nrole = "holdout"\n[data]\npath = "data/site.npz"\n'
        '[node]\nsuperlink = "10.0.0.1:9092"\nstate_dir = "state"\n',
    )
    site = load_site_settings(path)
    assert site.site.role is Role.HOLDOUT
    assert site.data.path == (tmp_path / "data" / "site.npz").resolve()
    assert site.node.state_dir == (tmp_path / "state").resolve()


def test_site_config_errors(tmp_path: Path) -> None:
    missing = _write(tmp_path, "a.toml", '[site]\nname = "a"\n[data]\npath = "none.npz"\n')
    with pytest.raises(ConfigError, match=r"a\.toml: data\.path: data set not found"):
        load_site_settings(missing)
    no_name = _write(tmp_path, "b.toml", '[site]\nrole = "train"\n[data]\npath = "x"\n')
    with pytest.raises(ConfigError, match=r"site\.name: required key is missing"):
        load_site_settings(no_name)
    bad_name = _write(tmp_path, "c.toml", '[site]\nname = "a b/c"\n[data]\npath = "x"\n')
    with pytest.raises(ConfigError, match=r"site\.name"):
        load_site_settings(bad_name)
    bad_link = _write(
        tmp_path, "d.toml", '[site]\nname = "a"\n[data]\npath = "x"\n[node]\nsuperlink = "x"\n'
    )
    with pytest.raises(ConfigError, match=r"node\.superlink: .*HOST:PORT"):
        load_site_settings(bad_link)


def test_site_with_several_data_sets_and_a_privacy_policy(tmp_path: Path) -> None:
    (tmp_path / "default.npz").write_bytes(b"")
    (tmp_path / "chest").mkdir()
    (tmp_path / "chest" / "manifest.toml").write_text("", encoding="utf-8")
    config = _write(
        tmp_path,
        "site.toml",
        '[site]\nname = "h"\n[data]\npath = "default.npz"\n'
        '[datasets.chest]\npath = "chest/manifest.toml"\n'
        "[privacy]\nmax_epsilon = 4.0\ndelta = 1e-6\n",
    )
    site = load_site_settings(config)
    assert site.dataset().path == tmp_path / "default.npz"
    assert site.dataset().kind == "npz"
    chest = site.dataset("chest")
    assert chest.path == tmp_path / "chest" / "manifest.toml"
    assert chest.kind == "manifest"
    assert site.privacy.max_epsilon == 4.0 and site.privacy.delta == 1e-6
    assert site.ledger_dir == Path.home() / ".consortia" / "nodes" / "h" / "privacy"
    with pytest.raises(ConfigError, match="no data set named 'brain'"):
        site.dataset("brain")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[datasets.x]\npath = 'missing.toml'\n", "datasets.x.path: data set not found"),
        ("[privacy]\nmax_epsilon = -1\n", "privacy.max_epsilon: Input should be greater than 0"),
        ("[privacy]\nepsilon = 3\n", "privacy.epsilon: unknown key"),
    ],
)
def test_site_privacy_and_data_set_mistakes_are_named(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "d.npz").write_bytes(b"")
    config = _write(tmp_path, "site.toml", f'[site]\nname = "h"\n[data]\npath = "d.npz"\n{text}')
    with pytest.raises(ConfigError, match=problem):
        load_site_settings(config)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("target_epsilon = 4\nnoise_multiplier = 1.0\n", "not both"),
        ("noise_multiplier = 0\n", "noise_multiplier: Input should be greater than 0"),
        ("accountant = 'gdp'\n", "accountant: Input should be 'rdp' or 'prv'"),
    ],
)
def test_run_privacy_mistakes_are_named(tmp_path: Path, text: str, problem: str) -> None:
    config = _write(tmp_path, "run.toml", f"[run]\n[run.privacy]\n{text}")
    with pytest.raises(ConfigError, match=problem):
        load_run_settings(config)


def test_run_privacy_defaults_to_a_target_epsilon() -> None:
    settings = run_settings_from_json("{}")
    assert settings.privacy.enabled and settings.privacy.target_epsilon == 8.0
    assert settings.privacy.noise_multiplier is None
    assert not settings.central_privacy.enabled


def test_node_needs_tls_files_unless_insecure(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"x")
    base = '[site]\nname = "a"\n[data]\npath = "d.npz"\n[node]\n'
    bare = load_site_settings(_write(tmp_path, "bare.toml", base))
    with pytest.raises(ConfigError, match=r"node\.root_certificates: .*CA certificate"):
        bare.node.check_connection_files("bare.toml")
    (tmp_path / "ca.pem").write_text("x")
    no_key = load_site_settings(
        _write(tmp_path, "nokey.toml", base + 'root_certificates = "ca.pem"\n')
    )
    with pytest.raises(ConfigError, match=r"node\.key: the site's private key"):
        no_key.node.check_connection_files("nokey.toml")
    with pytest.raises(ConfigError, match=r"node\.key: file not found"):
        load_site_settings(
            _write(tmp_path, "gone.toml", base + 'root_certificates = "ca.pem"\nkey = "k.key"\n')
        )
    (tmp_path / "k.key").write_text("x")
    ready = load_site_settings(
        _write(tmp_path, "ok.toml", base + 'root_certificates = "ca.pem"\nkey = "k.key"\n')
    )
    ready.node.check_connection_files("ok.toml")
    assert ready.node.key == (tmp_path / "k.key").resolve()
    insecure = load_site_settings(_write(tmp_path, "plain.toml", base + "insecure = true\n"))
    insecure.node.check_connection_files("plain.toml")


def test_secure_aggregation_settings(tmp_path: Path) -> None:
    auto = load_run_settings(_write(tmp_path, "auto.toml", "[run]\n"))
    assert not auto.secure_aggregation_for(2)
    assert auto.secure_aggregation_for(3)
    off = load_run_settings(
        _write(tmp_path, "off.toml", '[run.secure_aggregation]\nmode = "off"\n')
    )
    assert not off.secure_aggregation_for(10)
    central = load_run_settings(
        _write(tmp_path, "central.toml", "[run.central_privacy]\nenabled = true\n")
    )
    assert not central.secure_aggregation_for(10)  # "auto" yields to central privacy
    with pytest.raises(ConfigError, match="cannot combine with central_privacy"):
        load_run_settings(
            _write(
                tmp_path,
                "both.toml",
                '[run.central_privacy]\nenabled = true\n[run.secure_aggregation]\nmode = "on"\n',
            )
        )
    with pytest.raises(ConfigError, match=r"secure_aggregation\.threshold"):
        load_run_settings(_write(tmp_path, "t.toml", "[run.secure_aggregation]\nthreshold = 0.4\n"))
