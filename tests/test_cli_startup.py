"""The `consortia` command starts without torch, MONAI or Opacus (about 1 s instead of
about 9 s on a 2-core machine): only the command that runs loads what it needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "monai", "opacus", "matplotlib", "pydicom", "highdicom", "dp_accounting")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return set(result.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        # Every command group registered, as `consortia --help` and every command start.
        "from consortia.common.cli import build_app\nbuild_app()",
        # Reading and validating a run config and a site config.
        "import consortia.common.settings",
    ],
)
def test_startup_loads_no_heavy_library(code: str) -> None:
    assert _loaded_after(code) == set()


def test_the_command_that_needs_torch_still_loads_it() -> None:
    # The probe sees the module list, so it would see a lazy import that never happened.
    assert "torch" in _loaded_after("from consortia.common.models import build_model")
