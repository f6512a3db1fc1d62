"""Test helper: a federation started with the CLI, as a consortium runs it: `consortia
server start`, one `consortia node start` per site and `consortia run`, all real
processes on 127.0.0.1, stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from consortia.common.processes import free_port, wait_for_address

__all__ = ["CLI", "CliFederation"]

CLI = [sys.executable, "-m", "consortia.common.cli"]


class CliFederation:
    """A server and nodes started with the CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.superlink = f"127.0.0.1:{self.port}"
        self.runs = root / "runs"
        self.server: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes]] = []

    def start_server(self) -> None:
        log = (self.root / "server.log").open("ab")
        self.server = subprocess.Popen(
            [
                *CLI,
                "server",
                "start",
                "--port",
                str(self.port),
                "--runs-dir",
                str(self.runs),
                "--state-dir",
                str(self.root / "server"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_address(self.superlink, 60.0)

    def start_nodes(self, configs: list[Path]) -> None:
        for config in configs:
            log = (config.parent / "node.log").open("ab")
            self.nodes.append(
                subprocess.Popen(
                    [*CLI, "node", "start", "--site-config", str(config), "--num-threads", "1"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def stop_nodes(self) -> None:
        for node in self.nodes:
            node.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
        self.nodes = []

    def stop(self) -> None:
        self.stop_nodes()
        if self.server is not None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.server.kill()

    def run(self, name: str, config_text: str) -> dict[str, Any]:
        """Submit a run config and wait for it; returns results.json plus its `dir`."""
        config = self.root / f"{name}.toml"
        config.write_text(config_text, encoding="utf-8")
        before = set(self.runs.iterdir()) if self.runs.exists() else set()
        result = subprocess.run(
            [*CLI, "run", str(config), "--superlink", self.superlink, "--runs-dir", str(self.runs)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
        [run_dir] = set(self.runs.iterdir()) - before
        results: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
        return {"dir": run_dir, **results}

    def site_config(self, folder: Path, name: str, role: str, data: str, extra: str = "") -> Path:
        """Write `folder/site.toml` for a node of this federation."""
        config = folder / "site.toml"
        config.write_text(
            f'[site]\nname = "{name}"\nrole = "{role}"\n[data]\npath = "{data}"\n'
            f'[node]\nsuperlink = "{self.superlink}"\nstate_dir = "state"\n'
            f"runtime_port = {free_port()}\n{extra}",
            encoding="utf-8",
        )
        return config
