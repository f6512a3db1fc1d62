"""The `consortia` command starts without torch, MONAI or Opacus (about 1 s instead of
about 9 s on a 2-core machine): only the command that runs loads what it needs, and the
node launcher leaves them to the executor it starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "monai", "opacus", "matplotlib", "pydicom", "highdicom", "dp_accounting")
ML = ("torch", "monai", "opacus")


def _loaded_after(code: str, heavy: tuple[str, ...] = HEAVY) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in {heavy!r} if m in sys.modules)))"
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
        "import consortia.common.config.settings",
    ],
)
def test_startup_loads_no_heavy_library(code: str) -> None:
    assert _loaded_after(code) == set()


def test_the_node_launcher_leaves_torch_to_the_executor() -> None:
    # What `consortia node start` loads to check the site's data sets (pydicom included,
    # for the PHI guard) and start the SuperNode; the executor it starts loads torch and
    # MONAI once, for every round.
    launcher = "import consortia.client.data.dataset, consortia.client.node.supernode"
    assert _loaded_after(launcher, ML) == set()


def test_the_command_that_needs_torch_still_loads_it() -> None:
    # The probe sees the module list, so it would see a lazy import that never happened.
    assert "torch" in _loaded_after("from consortia.common.networks.models import build_model")
