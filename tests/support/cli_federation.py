"""Test helper: a federation started with the CLI, as a consortium runs it: `consortia
server start`, one `consortia node start` per site and `consortia run`, all real
processes on 127.0.0.1, stopped with SIGTERM.

By default it is secured as a consortium would be: a CA and server certificate, TLS,
one registered key pair per site, and every site approving each run before it starts
(`secure=False`: a plaintext server and nodes, for the tests of insecure mode)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from consortia.common.config.settings import load_run_settings, load_site_settings
from consortia.common.processes import free_port, free_ports, wait_for_address
from consortia.server.control import SuperLinkConnection, flwr_json
from consortia.server.launch.local_consortium import LocalConsortium, SiteKeys
from tests.support.builders import TomlTable, TomlValue, site_toml
from tests.support.cli import CLI
from tests.support.processes import kill_tree

__all__ = ["CLI", "CliFederation"]


class CliFederation:
    """A server and nodes started with the CLI."""

    def __init__(self, root: Path, *, secure: bool = True) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port, self.control_port = free_ports(2)
        self.superlink = f"127.0.0.1:{self.port}"  # the Fleet API, for the sites
        self.control = f"127.0.0.1:{self.control_port}"  # Control API, for the coordinator
        self.runs = root / "runs"
        self.server: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.consortium = LocalConsortium.create(root / "pki", root / "server") if secure else None
        self.registered: set[str] = set()
        self.site_configs: list[Path] = []

    def start_server(self) -> None:
        log = (self.root / "server.log").open("ab")
        security = (
            ["--insecure"]
            if self.consortium is None
            else ["--certs", str(self.consortium.security.certs_dir)]
        )
        self.server = subprocess.Popen(
            [
                *CLI,
                "server",
                "start",
                "--port",
                str(self.port),
                "--control-port",
                str(self.control_port),
                "--runs-dir",
                str(self.runs),
                "--state-dir",
                str(self.root / "server"),
                *security,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_address(self.superlink, 60.0)
        wait_for_address(self.control, 60.0)

    def register(self, config: Path) -> None:
        """Register the site's key with the running server (once)."""
        if self.consortium is None:
            return
        site = load_site_settings(config)
        if site.site.name in self.registered or site.node.key is None:
            return
        keys = SiteKeys(site.site.name, site.node.key, site.node.key.with_suffix(".pub"))
        self.consortium.register(keys, self.control)
        self.registered.add(site.site.name)

    def start_nodes(self, configs: list[Path]) -> None:
        for config in configs:
            self.register(config)
            if config not in self.site_configs:
                self.site_configs.append(config)
        for config in configs:
            log = (config.parent / "node.log").open("ab")
            self.nodes.append(
                subprocess.Popen(
                    [*CLI, "node", "start", "--site-config", str(config), "--num-threads", "1"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def online_nodes(self) -> int:
        """How many nodes the SuperLink sees online now (`flwr supernode list`)."""
        ca = None if self.consortium is None else self.consortium.ca_certificate
        connection = SuperLinkConnection.of(self.control, self.root / "flwr-watch", ca)
        nodes = flwr_json(connection, "supernode", "list", what="the node list").get("nodes")
        if not isinstance(nodes, list):
            return 0
        return sum(1 for node in nodes if node.get("status") == "online")

    def wait_online(self, count: int, timeout_s: float = 180.0) -> None:
        """Wait until `count` nodes are online, so that a run started now asks them all."""
        deadline = time.monotonic() + timeout_s
        while self.online_nodes() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} nodes online after {timeout_s:.0f} s")
            time.sleep(1.0)

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
        """SIGTERM the nodes and the server together (each launcher stops its own
        children within its grace period), then wait for all of them."""
        launchers = [*self.nodes, *([self.server] if self.server is not None else [])]
        for launcher in launchers:
            launcher.send_signal(signal.SIGTERM)
        for launcher in launchers:
            try:
                launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                launcher.kill()
        self.nodes = []

    def _security(self) -> list[str]:
        if self.consortium is None:
            return ["--insecure"]
        return ["--ca", str(self.consortium.ca_certificate)]

    def _approved(self, name: str, config_text: str, approved_by: list[Path] | None) -> Path:
        config = self.root / f"{name}.toml"
        config.write_text(config_text, encoding="utf-8")
        if self.consortium is not None:
            settings = load_run_settings(config)
            approving = self.site_configs if approved_by is None else approved_by
            for site_config in approving:
                self.consortium.approve(load_site_settings(site_config), settings, by="tests")
        return config

    def _cli(self, *args: str, wait: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*CLI, "run", *args, "--superlink", self.control, *self._security()]
            + ([] if wait else ["--no-wait"]),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
        return result

    def run(
        self, name: str, config_text: str, *, approved_by: list[Path] | None = None
    ) -> dict[str, Any]:
        """Submit a run config and wait for it; returns results.json plus its `dir`.
        Every started site approves the run first, or only those in `approved_by`."""
        config = self._approved(name, config_text, approved_by)
        before = set(self.runs.iterdir()) if self.runs.exists() else set()
        self._cli(str(config), "--runs-dir", str(self.runs))
        [run_dir] = set(self.runs.iterdir()) - before
        return self.results(run_dir)

    def submit(self, name: str, config_text: str, timeout_s: float = 120.0) -> Path:
        """Submit a run config without waiting; returns the run folder once it exists."""
        config = self._approved(name, config_text, None)
        before = set(self.runs.iterdir()) if self.runs.exists() else set()
        self._cli(str(config), wait=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            new = set(self.runs.iterdir()) - before if self.runs.exists() else set()
            if new:
                return new.pop()
            time.sleep(0.5)
        raise AssertionError(f"no run folder appeared within {timeout_s:.0f} s")

    def resume(self, run_dir: Path) -> dict[str, Any]:
        """`consortia run --resume RUN_DIR`, waiting for the run to end."""
        self._cli("--resume", str(run_dir))
        return self.results(run_dir)

    @staticmethod
    def results(run_dir: Path) -> dict[str, Any]:
        results: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
        return {"dir": run_dir, **results}

    def kill_server(self) -> None:
        """SIGKILL the server and everything it started (SuperLink, ServerApp)."""
        if self.server is not None:
            kill_tree(self.server.pid)
            self.server.wait(timeout=30)

    def site_config(
        self,
        folder: Path,
        name: str,
        *,
        role: str = "train",
        data: str | Path = "data.npz",
        node: TomlTable | None = None,
        privacy: TomlTable | None = None,
        tables: Mapping[str, TomlTable] | None = None,
    ) -> Path:
        """Write `folder/site.toml` for a node of this federation: its SuperLink, state in
        `folder/state`, a runtime port, TLS and a new key pair (or plaintext), plus the
        `node` keys and `privacy` and other `tables` given."""
        security: dict[str, TomlValue] = {"insecure": True}
        if self.consortium is not None:
            keys = self.consortium.site_keys(name, folder / "keys")
            security = {
                "root_certificates": self.consortium.ca_certificate,
                "key": keys.private_key,
            }
        node_table = {
            "superlink": self.superlink,
            "state_dir": "state",
            "runtime_port": free_port(),
            **security,
            **(node or {}),
        }
        config = folder / "site.toml"
        config.write_text(
            site_toml(name, role=role, data=data, node=node_table, privacy=privacy, tables=tables),
            encoding="utf-8",
        )
        return config
