"""What a hospital IT person sees first: argument help that renders, `--version`, a
config typo answered with "did you mean", and a user error as one plain line."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortia.common.cli import build_app
from consortia.common.config.settings import load_run_settings
from consortia.common.errors import ConfigError

CLI = [sys.executable, "-m", "consortia.common.cli"]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["audit", "compare"], "A provenance.json"),
        (["node", "approve"], "The study's run config"),
        (["audit", "config-hash"], "A study's run config (TOML)."),
    ],
)
def test_argument_help_renders(command: list[str], expected: str) -> None:
    result = CliRunner().invoke(build_app(), [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert expected in result.output


def test_version() -> None:
    result = CliRunner().invoke(build_app(), ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"consortia {version('consortia')}"


def test_a_config_typo_gets_a_did_you_mean(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[run]\nnme = "x"\n[run.training]\nlearning_rat = 0.1\n[[run.sites]]\n'
                      'nam = "a"\n')  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_run_settings(config)
    message = str(caught.value)
    assert "nme: unknown key (did you mean 'name'?)" in message
    assert "training.learning_rat: unknown key (did you mean 'learning_rate'?)" in message
    assert "sites.0.nam: unknown key (did you mean 'name'?)" in message


def test_a_user_error_is_one_plain_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    done = subprocess.run(
        [*CLI, "audit", "config-hash", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {missing}: config file not found"
