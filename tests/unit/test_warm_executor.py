"""The warm executor's preparation: heavy imports (Flower's ClientApp runner included) and
lazy loads happen once, in the parent, without starting threads that would make forking
unsafe; and the SuperNode launcher that goes with it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from consortia.client.node.warm_executor import WarmExecutor


def test_warm_up_imports_and_prewarms_in_a_fresh_process() -> None:
    code = (
        "import sys, threading\n"
        "from consortia.client.node.warm_executor import WarmExecutor\n"
        "WarmExecutor('127.0.0.1:1', insecure=True).warm_up()\n"
        "assert 'monai' in sys.modules and 'consortia.client.client_app' in sys.modules\n"
        "assert 'flwr.supernode.runtime.run_clientapp' in sys.modules\n"
        "import torch\n"
        "before = set(sys.modules)\n"
        "torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])\n"
        "print('new_modules', len(set(sys.modules) - before))\n"
        "print('threads', threading.active_count())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    values = dict(line.split() for line in result.stdout.splitlines())
    assert int(values["new_modules"]) == 0  # the prewarm hook already loaded them
    assert int(values["threads"]) == 1  # nothing that would make fork unsafe


def test_rejects_bad_poll_interval() -> None:
    with pytest.raises(ValueError, match="poll_interval_s"):
        WarmExecutor("127.0.0.1:1", insecure=True, poll_interval_s=0)


def test_supernode_launcher_is_flowers_cli_with_waiting_object_pulls() -> None:
    code = (
        "import sys\n"
        "from flwr.supernode.fleet_http_client import FleetHttpClient\n"
        "from consortia.client.node.supernode import main\n"
        "from consortia.common.wire.object_pull import ObjectPull\n"
        "sys.argv = ['supernode', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        "print('wrapped', FleetHttpClient.PullObject.__wrapped_by__ is ObjectPull)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "--superlink" in result.stdout  # Flower's own argument parser answered
    assert "exit 0" in result.stdout
    assert "wrapped True" in result.stdout
