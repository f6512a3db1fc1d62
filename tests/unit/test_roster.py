"""The study roster (`[[run.sites]]`): validation with errors naming the field, the
site's own check, and which registered nodes the server may ask."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortia.common.config.roster import admitted_by_roster, own_entry_refusal, roster_node_ids
from consortia.common.config.settings import Role, RunSettings, load_run_settings
from consortia.common.errors import ConfigError

A = "SHA256:" + "A" * 43
B = "SHA256:" + "B" * 43


def _load(tmp_path: Path, sites: str, extra: str = "") -> RunSettings:
    config = tmp_path / "run.toml"
    config.write_text(f'[run]\nname = "s"\nmin_sites = 1\n{extra}{sites}', encoding="utf-8")
    return load_run_settings(config)


def _tables(*entries: tuple[str, str, str]) -> str:
    return "".join(
        f'[[run.sites]]\nname = "{n}"\nfingerprint = "{f}"\nrole = "{r}"\n' for n, f, r in entries
    )


def test_the_roster_loads_from_toml_and_is_part_of_the_config_hash(tmp_path: Path) -> None:
    from consortia.common.wire.run_identity import config_hash

    settings = _load(tmp_path, _tables(("a", A, "train"), ("h", B, "holdout")))
    assert settings.roster["h"].role is Role.HOLDOUT
    swapped = _load(tmp_path, _tables(("a", B, "train"), ("h", A, "holdout")))
    assert config_hash(settings) != config_hash(swapped)


@pytest.mark.parametrize(
    ("sites", "extra", "message"),
    [
        (_tables(("a", A, "train"), ("a", B, "train")), "", "a listed more than once"),
        (_tables(("a", A, "train"), ("b", A, "train")), "", "share one key fingerprint"),
        (_tables(("a", "SHA256:short", "train")), "", r"sites\.0\.fingerprint"),
        (_tables(("a", A, "observer")), "", r"sites\.0\.role"),
        (_tables(("a", A, "train")), "min_sites = 2\n", "roster .* lists 1"),
        ('[[run.sites]]\nname = "a"\nfingerprint = "' + A + '"\nkey = 1\n', "", "key"),
    ],
)
def test_a_bad_roster_is_refused_naming_the_field(
    tmp_path: Path, sites: str, extra: str, message: str
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(f'[run]\nname = "s"\n{extra or "min_sites = 1"}\n{sites}')
    with pytest.raises(ConfigError, match=message):
        load_run_settings(config)


def test_own_entry_and_server_side_admission(tmp_path: Path) -> None:
    settings = _load(tmp_path, _tables(("a", A, "train"), ("h", B, "holdout")))
    assert own_entry_refusal(settings, "a", Role.TRAIN, A) is None
    assert "no key" in str(own_entry_refusal(settings, "a", Role.TRAIN, None))
    assert admitted_by_roster(settings, "a", Role.TRAIN) is None
    assert "not in the study's roster" in str(admitted_by_roster(settings, "x", Role.TRAIN))
    assert "lists it as holdout" in str(admitted_by_roster(settings, "h", Role.TRAIN))


def test_the_server_asks_only_registered_nodes_whose_key_matches_the_roster(
    tmp_path: Path,
) -> None:
    settings = _load(tmp_path, _tables(("a", A, "train"), ("b", B, "train")))
    registered = [("a", A, 11), ("b", A, 12), ("c", B, 13), ("b", B, None)]
    # b's registered key is not the roster's (node 12), c is not listed, b's other entry
    # has no node: only a's node may be asked.
    assert roster_node_ids(settings.sites, registered) == {11}
