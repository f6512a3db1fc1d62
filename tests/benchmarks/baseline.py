"""Run a benchmark on another source tree, to compare code before and after a change.

A benchmark given ``--baseline-src TREE`` runs each of its configurations twice, one right
after the other: first the copy of itself in ``TREE`` (a source tree with ``src/consortia``
and ``tests/``, e.g. ``git archive HEAD | tar -x -C TREE``) as ``python -m`` in ``TREE`` with
``TREE/src`` first on ``PYTHONPATH``, then itself. Both runs share the machine's load at
that time, which matters on a shared CPU.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_baseline"]

logger = logging.getLogger("consortia.benchmarks")


def run_baseline(tree: Path, module: str, args: Sequence[str], out_flag: str) -> dict[str, Any]:
    """Run benchmark `module` (``tests.benchmarks.NAME``) of `tree` with `args` on `tree`'s
    code; returns its JSON report."""
    tree = tree.resolve()
    source = tree / "src"
    if not (source / "consortia").is_dir():
        raise ValueError(f"{tree} has no src/consortia: not a Consortia source tree")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory(prefix="consortia-baseline-") as scratch:
        out = Path(scratch) / "baseline.json"
        command = [sys.executable, "-m", module, *args, out_flag, str(out)]
        logger.info("baseline run on %s: %s", tree, " ".join(args))
        subprocess.run(command, cwd=tree, env=env, check=True)
        report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return report
