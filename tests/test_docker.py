"""The container images and the compose federation in docker/, checked without a Docker engine.

Neither this machine nor CI has a Docker engine, so nothing here builds an image or starts a
container. What is checked instead:

- the compose file's structure: build files, bind-mounted files, volumes, networks,
  `depends_on`, images built by some service, the nodes' read-only data and keys;
- the Dockerfiles: base image, torch 2.13.0, non-root user, telemetry off, ports, volumes,
  `ENTRYPOINT ["consortia"]`, files they copy;
- every `consortia ...` command line (compose commands, the images' CMD, and what the shell
  scripts actually run) against the real CLI parser: subcommands, options, arguments;
- the site configs and the run config with the real loaders;
- the wiring, by running the one-shot services' scripts on this machine: every volume and
  every container's view of it is a folder and a tree of symlinks under tmp_path, so the
  files the `pki` service writes must be where the server, `register` and the nodes look for
  them, the demo data and the approval written by `hospital-*-init` must be what the node
  loads, and the run config the coordinator submits must be the one the sites approved.
  `consortia` is replaced by a recorder (which runs `certs` for real) and the recorded
  commands are parsed, and `node approve` is replayed in-process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import typer
import yaml
from cryptography import x509
from typer.testing import CliRunner

from consortia.common.approvals import ApprovalStore
from consortia.common.cli import build_app
from consortia.common.run_identity import app_hash, config_hash
from consortia.common.settings import load_run_settings, load_site_settings
from consortia.server.server_security import ServerSecurity
from consortia.server.site_registry import site_name_from_public_key

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
GPU_FILE = DOCKER / "compose.gpu.yaml"
RUN_CONFIG = DOCKER / "run-demo.toml"
SCRIPTS = sorted(DOCKER.glob("*.sh"))
SITE_CONFIGS = sorted((DOCKER / "sites").glob("*.toml"))
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))

SITES = ("hospital-a", "hospital-b", "hospital-c")
BASE_IMAGE = "python:3.11-slim"
TORCH_VERSION = "2.13.0"
SUPERLINK_PORT = 9092
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# Site config fields that hold paths (relative ones are relative to the file).
SITE_PATH_FIELDS = (("data", "path"), ("node", "root_certificates"), ("node", "key"))


# -- reading the files ------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


@functools.cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of two files, as far as these files need it: mappings merge key by
    key, everything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


@dataclass(frozen=True)
class Mount:
    source: str  # a named volume, or a path relative to docker/
    target: str
    read_only: bool

    @property
    def is_volume(self) -> bool:
        return not self.source.startswith((".", "/"))

    @property
    def host_source(self) -> Path:
        assert not self.is_volume
        return (DOCKER / self.source).resolve()


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    found = []
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"use the short volume syntax SOURCE:TARGET[:ro]: {entry}"
        parts = entry.split(":")
        assert len(parts) in (2, 3), f"not SOURCE:TARGET[:MODE]: {entry}"
        mode = parts[2] if len(parts) == 3 else "rw"
        assert mode in ("ro", "rw"), f"unknown mount mode in {entry}"
        assert parts[1].startswith("/"), f"mount target must be absolute: {entry}"
        found.append(Mount(parts[0], parts[1], mode == "ro"))
    return found


def mount_at(service: Mapping[str, Any], target: str) -> Mount:
    found = [mount for mount in mounts(service) if mount.target == target]
    assert len(found) == 1, f"expected one mount at {target}, got {found}"
    return found[0]


@dataclass(frozen=True)
class Dockerfile:
    """The instructions of a Dockerfile: continuation lines joined, comments dropped."""

    path: Path
    instructions: tuple[tuple[str, str], ...]

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        instructions: list[tuple[str, str]] = []
        current = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            current += line
            keyword, _, rest = current.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
        assert not current, f"{path}: ends inside a continued line"
        return cls(path, tuple(instructions))

    def args(self, keyword: str) -> list[str]:
        return [rest for name, rest in self.instructions if name == keyword]

    @property
    def final_stage(self) -> list[tuple[str, str]]:
        starts = [i for i, (name, _) in enumerate(self.instructions) if name == "FROM"]
        assert starts, f"{self.path}: no FROM"
        return list(self.instructions[starts[-1] :])

    def final(self, keyword: str) -> list[str]:
        return [rest for name, rest in self.final_stage if name == keyword]

    def exec_form(self, keyword: str) -> list[str]:
        found = self.final(keyword)
        assert found, f"{self.path}: no {keyword} in the final stage"
        value = json.loads(found[-1])  # exec form only: no shell in between
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value

    def arg_defaults(self) -> dict[str, str]:
        defaults: dict[str, str] = {}
        for rest in self.args("ARG"):
            name, _, default = rest.partition("=")
            defaults.setdefault(name.strip(), default.strip())
        return defaults

    def substituted(self, text: str) -> str:
        """`text` with ${NAME} and ${NAME:-default} replaced by the ARG defaults."""
        defaults = self.arg_defaults()

        def value(match: re.Match[str]) -> str:
            name, fallback = match.group(1), match.group(3) or ""
            return defaults.get(name) or fallback

        return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", value, text)

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for rest in self.final("ENV"):
            for pair in shlex.split(rest):
                name, sep, value = pair.partition("=")
                assert sep, f"{self.path}: use ENV NAME=VALUE, not {rest!r}"
                values[name] = value
        return values

    def copies(self) -> dict[str, Path]:
        """Files copied from the build context into the final image: target -> source."""
        copied: dict[str, Path] = {}
        for rest in self.final("COPY"):
            words = shlex.split(rest)
            if any(word.startswith("--from") for word in words):
                continue
            paths = [word for word in words if not word.startswith("--")]
            *sources, target = paths
            for source in sources:
                copied[target if len(sources) == 1 else target + Path(source).name] = ROOT / source
        return copied

    def build_sources(self) -> list[str]:
        """Every COPY source from the build context, in any stage."""
        found = []
        for rest in self.args("COPY"):
            words = shlex.split(rest)
            if any(word.startswith("--from") for word in words):
                continue
            found += [word for word in words if not word.startswith("--")][:-1]
        return found


def builders() -> dict[str, dict[str, Any]]:
    """Image name -> the build section of the service that builds it."""
    found: dict[str, dict[str, Any]] = {}
    for name, service in services().items():
        if "build" in service:
            assert service.get("image"), f"service {name} builds an image without naming it"
            found[service["image"]] = service["build"]
    return found


def dockerfile_of(image: str) -> Dockerfile:
    build = builders()[image]
    return Dockerfile.read((DOCKER / build["context"] / build["dockerfile"]).resolve())


def image_of(service_name: str) -> str:
    image = services()[service_name].get("image")
    assert isinstance(image, str), f"service {service_name} names no image"
    return image


def entrypoint_of(service_name: str) -> list[str]:
    service = services()[service_name]
    if "entrypoint" in service:
        value = service["entrypoint"]
        assert isinstance(value, list), f"{service_name}: use the exec form for entrypoint"
        return [str(v) for v in value]
    return dockerfile_of(image_of(service_name)).exec_form("ENTRYPOINT")


def command_of(service_name: str) -> list[str]:
    service = services()[service_name]
    if "command" in service:
        value = service["command"]
        assert isinstance(value, list), f"{service_name}: use the exec form for command"
        return [str(v) for v in value]
    if "entrypoint" in service:
        return []  # an entrypoint set by compose drops the image's CMD
    return dockerfile_of(image_of(service_name)).exec_form("CMD")


def script_of(service_name: str) -> Path:
    """The docker/*.sh that a one-shot service's entrypoint runs (copied into its image)."""
    entrypoint = entrypoint_of(service_name)
    assert len(entrypoint) == 1, f"{service_name}: entrypoint {entrypoint}"
    copies = dockerfile_of(image_of(service_name)).copies()
    matches = [
        source
        for target, source in copies.items()
        if target == entrypoint[0] or Path(target).name == entrypoint[0]
    ]
    assert matches, f"{service_name}: its image copies nothing named {entrypoint[0]}"
    assert Path("/usr/local/bin") in [Path(t).parent for t in copies], "scripts not on PATH"
    return matches[0]


def option(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} once in {argv}"
    return argv[argv.index(name) + 1]


def consortia_services() -> list[str]:
    return [name for name in services() if entrypoint_of(name) == ["consortia"]]


def one_shot_services() -> list[str]:
    return [name for name in services() if entrypoint_of(name) != ["consortia"]]


def node_services() -> list[str]:
    return [name for name in consortia_services() if command_of(name)[:2] == ["node", "start"]]


# -- the real CLI ------------------------------------------------------------------------------


@functools.cache
def cli() -> click.Group:
    command = typer.main.get_command(build_app())
    assert isinstance(command, click.Group)
    return command


def check_cli(argv: list[str]) -> click.Context:
    """Parse `consortia ARGV` with the real parser (commands, options, arguments, types),
    without running it; fails the test with click's message."""
    group: click.Group = cli()
    context = click.Context(group, info_name="consortia")
    args = list(argv)
    while True:
        assert args, f"consortia {shlex.join(argv)}: no command after {context.command_path}"
        name = args.pop(0)
        command = group.get_command(context, name)
        assert command is not None, f"consortia {shlex.join(argv)}: no command {name!r}"
        if isinstance(command, click.Group):
            group, context = command, click.Context(command, info_name=name, parent=context)
            continue
        try:
            return command.make_context(name, args, parent=context)
        except click.ClickException as err:
            pytest.fail(f"consortia {shlex.join(argv)}: {err.format_message()}")


def command_pairs(script: Path) -> set[tuple[str, str]]:
    """The `consortia GROUP COMMAND` pairs written in a shell script."""
    text = "\n".join(
        line
        for line in script.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    )
    return set(re.findall(r"\bconsortia\s+([a-z][a-z-]*)\s+([a-z][a-z-]*)", text))


# -- a compose project laid out in folders ---------------------------------------------------

FAKE_CONSORTIA = """#!{python}
# Records its command line; `consortia certs ...` runs for real (quick, no torch import).
import json
import os
import sys

with open(os.environ["FAKE_CONSORTIA_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:2] == ["certs"]:
    from consortia.server.certs_cli import certs_app

    certs_app(args=sys.argv[2:], prog_name="consortia certs")
"""


class Project:
    """The compose project on this machine: a folder per named volume, and per service a
    root folder whose mount points are symlinks to the volumes and bind-mounted files, so a
    path inside a container is `root(service) / path`."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        fake = self.bin / "consortia"
        fake.write_text(FAKE_CONSORTIA.format(python=sys.executable), encoding="utf-8")
        fake.chmod(0o755)
        self.log = tmp_path / "consortia-calls.jsonl"
        self.roots: dict[str, Path] = {}

    def volume(self, name: str) -> Path:
        assert name in (compose().get("volumes") or {}), f"volume {name} is not declared"
        path = self.base / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def root(self, service_name: str) -> Path:
        if service_name in self.roots:
            return self.roots[service_name]
        root = self.roots[service_name] = self.base / "containers" / service_name
        root.mkdir(parents=True)
        for mount in mounts(services()[service_name]):
            link = root / mount.target.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            source = self.volume(mount.source) if mount.is_volume else mount.host_source
            link.symlink_to(source)
        return root

    def path(self, service_name: str, container_path: str) -> Path:
        assert container_path.startswith("/"), container_path
        return self.root(service_name) / container_path.lstrip("/")

    def translate(self, service_name: str, value: str) -> str:
        """An environment value as the script sees it here: absolute paths moved under the
        service's root."""
        return " ".join(
            str(self.path(service_name, word)) if word.startswith("/") else word
            for word in value.split()
        )

    def run_script(
        self, service_name: str, extra_env: Mapping[str, str] | None = None
    ) -> list[list[str]]:
        """Run a one-shot service's script; returns the `consortia` command lines it ran."""
        script = script_of(service_name)
        environment = services()[service_name].get("environment", {})
        assert isinstance(environment, dict), f"{service_name}: use a mapping for environment"
        env = dict(os.environ)
        env.update(
            {key: self.translate(service_name, str(value)) for key, value in environment.items()}
        )
        env.update(extra_env or {})
        env["PATH"] = os.pathsep.join(
            [str(self.bin), str(Path(sys.executable).parent), env.get("PATH", "")]
        )
        env["FAKE_CONSORTIA_LOG"] = str(self.log)
        self.log.unlink(missing_ok=True)
        result = subprocess.run(
            ["bash", str(script)], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, (
            f"{service_name} ({script.name}) failed:\n{result.stdout}\n{result.stderr}"
        )
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]

    def site_config(self, service_name: str, container_path: str) -> Path:
        """A copy of the site config at `container_path` whose absolute paths point where
        they lead inside `service_name`'s container."""
        source = self.path(service_name, container_path)
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
        lines = []
        for table, values in raw.items():
            lines.append(f"[{table}]")
            for key, value in values.items():
                assert not isinstance(value, dict), f"{source}: nested table {table}.{key}"
                if (table, key) in (*SITE_PATH_FIELDS, ("node", "state_dir")) and str(
                    value
                ).startswith("/"):
                    value = str(self.path(service_name, value))
                lines.append(f"{key} = {json.dumps(value)}")
        copy = self.base / "site-configs" / service_name / source.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return copy


def tree_digest(*folders: Path) -> dict[str, str]:
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# -- compose structure -----------------------------------------------------------------------


def test_compose_services_and_images() -> None:
    assert compose().get("name") == "consortia"
    names = set(services())
    assert {"pki", "server", "register", *SITES, *(f"{s}-init" for s in SITES)} <= names
    assert set(node_services()) == set(SITES)
    built = builders()
    assert set(built) == {"consortia-server:latest", "consortia-node:cpu"}
    for image, build in built.items():
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT, f"{image}: the build context must be the repository root"
        assert (context / build["dockerfile"]).is_file(), f"{image}: no {build['dockerfile']}"
    for name, service in services().items():
        assert service.get("image") in built, f"{name}: image {service.get('image')} not built"
        if "build" not in service:
            # Built by another service: never pulled from a registry.
            assert service.get("pull_policy") == "never", f"{name}: pull_policy: never"
    assert builders()["consortia-node:cpu"]["args"]["VARIANT"] == "cpu"


def test_compose_volumes_networks_and_files() -> None:
    declared = set(compose().get("volumes") or {})
    used: set[str] = set()
    for name, service in services().items():
        targets = [mount.target for mount in mounts(service)]
        for target in targets:
            nested = [t for t in targets if t != target and t.startswith(target.rstrip("/") + "/")]
            assert not nested, f"{name}: mounts inside the mount at {target}: {nested}"
        for mount in mounts(service):
            if mount.is_volume:
                assert mount.source in declared, f"{name}: volume {mount.source} not declared"
                used.add(mount.source)
            else:
                assert mount.host_source.exists(), f"{name}: {mount.source} does not exist"
                assert mount.host_source.is_relative_to(DOCKER), f"{name}: {mount.source}"
                assert mount.read_only, f"{name}: bind-mount {mount.source} read-only"
    assert used == declared, f"declared but unused volumes: {declared - used}"

    networks = set(compose().get("networks") or {})
    for name, service in services().items():
        if service.get("network_mode") == "none":
            assert "networks" not in service and "ports" not in service, name
            continue
        assert service.get("networks"), f"{name}: no network (or network_mode: none)"
        for network in service["networks"]:
            assert network in networks, f"{name}: network {network} not declared"
    # Each hospital shares a network with the server only.
    for site in SITES:
        assert services()[site]["networks"] == [site]
        assert site in services()["server"]["networks"]


def test_compose_depends_on() -> None:
    names = set(services())
    graph: dict[str, set[str]] = {}
    for name, service in services().items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        for other, spec in depends.items():
            assert other in names, f"{name} depends on unknown service {other}"
            assert spec.get("condition") in CONDITIONS, f"{name} -> {other}: {spec}"
            if spec["condition"] == "service_completed_successfully":
                assert other in one_shot_services(), f"{name} waits for {other} to exit"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services()[other], f"{other} has no healthcheck"
        graph[name] = set(depends)

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {' -> '.join((*path, name))}"
        for other in graph[name]:
            visit(other, (*path, name))

    for name in graph:
        visit(name, ())
    for site in SITES:
        depends = services()[site]["depends_on"]
        assert depends[f"{site}-init"]["condition"] == "service_completed_successfully"
        assert depends["register"]["condition"] == "service_completed_successfully"
    assert services()["register"]["depends_on"]["server"]["condition"] == "service_healthy"


def test_compose_long_running_services() -> None:
    for name in ("server", *SITES):
        service = services()[name]
        assert service.get("restart") == "unless-stopped", name
        assert service.get("init") is True, f"{name}: init reaps Flower's child processes"
        assert "user" not in service, f"{name} must run as the image's non-root user"
    for name in one_shot_services():
        assert services()[name].get("restart") == "no", name
    # Only the pki service runs as root (to hand fresh volumes to the images' user).
    assert [n for n, s in services().items() if "user" in s] == ["pki"]
    owner = services()["pki"]["environment"]["PKI_OWNER"]
    for dockerfile in DOCKERFILES:
        defaults = Dockerfile.read(dockerfile).arg_defaults()
        assert owner == f"{defaults['UID']}:{defaults['GID']}", dockerfile.name
    server = services()["server"]
    assert f"127.0.0.1:{SUPERLINK_PORT}:{SUPERLINK_PORT}" in server["ports"]
    health = server["healthcheck"]["test"]
    assert health[0] == "CMD" and str(SUPERLINK_PORT) in health[-1]


def test_nodes_mount_data_and_keys_read_only() -> None:
    for site in SITES:
        node = services()[site]
        site_config = tomllib.loads(
            mount_at(node, option(command_of(site), "--site-config")).host_source.read_text(
                encoding="utf-8"
            )
        )
        assert site_config["site"]["name"] == site
        data = mount_at(node, str(Path(site_config["data"]["path"]).parent))
        assert data.is_volume and data.read_only, f"{site}: data read-only"
        keys = mount_at(node, str(Path(site_config["node"]["key"]).parent))
        assert keys.is_volume and keys.read_only, f"{site}: keys read-only"
        state = mount_at(node, site_config["node"]["state_dir"])
        assert state.is_volume and not state.read_only, f"{site}: state on a named volume"
        assert state.source == f"{site}-state"
        node_volume = dockerfile_of(image_of(site)).final("VOLUME")
        assert site_config["node"]["state_dir"] in json.loads(node_volume[-1])
        # No two sites share a volume.
        for other in SITES:
            if other != site:
                others = {m.source for m in mounts(services()[other]) if m.is_volume}
                assert not {data.source, keys.source, state.source} & others


# -- Dockerfiles -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile(path: Path) -> None:
    dockerfile = Dockerfile.read(path)
    stages = []
    for rest in dockerfile.args("FROM"):
        words = dockerfile.substituted(rest).split()
        assert words[0] == BASE_IMAGE or words[0] in stages, f"FROM {rest}"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.append(words[2])
    for rest in dockerfile.args("RUN"):  # shell form, run by the image's /bin/sh
        result = subprocess.run(["sh", "-n", "-c", rest], capture_output=True, text=True)
        assert result.returncode == 0, f"RUN {rest}: {result.stderr}"
    run = " ".join(dockerfile.substituted(rest) for rest in dockerfile.args("RUN"))
    assert f"torch=={TORCH_VERSION}" in run
    assert re.search(r'--index-url "?https://download\.pytorch\.org/whl/cpu"?', run)
    assert re.search(r"pip install (\S+ )?\"?\.(\[[a-z,]+\])?\"?( |$)", run), "pip install ."

    users = re.findall(r"useradd .*?--uid \S+ .*?(\w+)\s*(?:&&|$)", run)
    user = dockerfile.final("USER")
    assert user and user[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert user[-1] in users, f"USER {user[-1]} is not created (useradd)"
    assert dockerfile.env().get("FLWR_TELEMETRY_ENABLED") == "0"
    assert dockerfile.exec_form("ENTRYPOINT") == ["consortia"]
    check_cli(dockerfile.exec_form("CMD"))

    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name}: keep the virtualenv out of the build context"
    allowed = [
        line[1:].rstrip("/")
        for line in ignore.read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    for source in dockerfile.build_sources():
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert source.rstrip("/") in allowed, f"COPY {source}: excluded by {ignore.name}"
    for target, copied in dockerfile.copies().items():
        if copied.suffix == ".sh":
            assert Path(target).parent == Path("/usr/local/bin"), target
            assert "--chmod=0755" in " ".join(dockerfile.final("COPY"))


def test_server_dockerfile() -> None:
    dockerfile = Dockerfile.read(DOCKER / "server.Dockerfile")
    assert dockerfile.final("EXPOSE") == [str(SUPERLINK_PORT)]
    command = dockerfile.exec_form("CMD")
    assert command[:2] == ["server", "start"]
    assert option(command, "--host") == "0.0.0.0"
    assert option(command, "--port") == str(SUPERLINK_PORT)
    volumes = json.loads(dockerfile.final("VOLUME")[-1])
    for flag in ("--state-dir", "--runs-dir", "--certs"):
        assert option(command, flag) in volumes, f"{flag} is not a VOLUME"
    # The compose server runs what the image runs by default.
    assert command_of("server") == command


def test_node_dockerfile_variants(tmp_path: Path) -> None:
    """The RUN that installs torch, run with a `pip` that prints its arguments."""
    dockerfile = Dockerfile.read(DOCKER / "node.Dockerfile")
    assert dockerfile.arg_defaults()["VARIANT"] == "cpu"
    assert ".[codecs]" in " ".join(dockerfile.args("RUN"))
    (install,) = [rest for rest in dockerfile.args("RUN") if "torch==" in rest]
    pip = tmp_path / "pip"
    pip.write_text('#!/bin/sh\necho "$@"\n', encoding="utf-8")
    pip.chmod(0o755)

    def torch_install(variant: str, index: str = "") -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
            "VARIANT": variant,
            "TORCH_VERSION": dockerfile.arg_defaults()["TORCH_VERSION"],
            "TORCH_INDEX_URL": index,
        }
        return subprocess.run(["sh", "-c", install], env=env, capture_output=True, text=True)

    cpu = f"install torch=={TORCH_VERSION} --index-url https://download.pytorch.org/whl/cpu"
    assert torch_install("cpu").stdout.strip() == cpu
    assert torch_install("cuda").stdout.strip() == f"install torch=={TORCH_VERSION}"  # PyPI
    index = "https://example.org/whl/cu128"
    assert torch_install("cuda", index).stdout.strip().endswith(f"--index-url {index}")
    assert torch_install("gpu").returncode != 0
    assert dockerfile.exec_form("CMD") == [
        "node",
        "start",
        "--site-config",
        "/etc/consortia/site.toml",
    ]


# -- command lines ---------------------------------------------------------------------------


@pytest.mark.parametrize("service_name", sorted(services()))
def test_service_command_parses(service_name: str) -> None:
    entrypoint = entrypoint_of(service_name)
    if entrypoint == ["consortia"]:
        check_cli(command_of(service_name))
    else:
        assert script_of(service_name).is_file()
        assert "command" not in services()[service_name]


def test_check_cli_rejects_wrong_command_lines() -> None:
    """The parser check is real: unknown commands, options and missing arguments fail."""
    check_cli(["node", "approve", "run.toml", "--site-config", "site.toml"])
    for wrong in (
        ["node", "approve", "run.toml"],
        ["node", "start", "--site-config", "s.toml", "--no-such-option"],
        ["server", "start", "--port", "not-a-number"],
    ):
        with pytest.raises(pytest.fail.Exception):
            check_cli(wrong)
    with pytest.raises(AssertionError):
        check_cli(["node", "launch"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_syntax(script: Path) -> None:
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    used = [name for name in one_shot_services() if script_of(name) == script]
    assert used, f"{script.name} is run by no service"


# -- configs ---------------------------------------------------------------------------------


def test_run_config_loads() -> None:
    settings = load_run_settings(RUN_CONFIG)
    assert settings.min_sites == len(SITES)
    assert settings.privacy.enabled
    assert settings.secure_aggregation_for(len(SITES))


@pytest.mark.parametrize("path", SITE_CONFIGS, ids=lambda p: p.name)
def test_site_config_loads(path: Path, tmp_path: Path) -> None:
    """Valid with the real loader once the files it names exist (here: under tmp_path)."""
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    assert raw["site"]["name"] == path.stem
    host, _, port = raw["node"]["superlink"].rpartition(":")
    assert host == "server" and int(port) == SUPERLINK_PORT
    text = path.read_text(encoding="utf-8")
    for table, key in SITE_PATH_FIELDS:
        container_path = raw[table][key]
        assert container_path.startswith("/"), f"{table}.{key}: absolute inside the container"
        stub = tmp_path / container_path.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.touch()
        text = text.replace(f'"{container_path}"', json.dumps(str(stub)))
    state = raw["node"]["state_dir"]
    text = text.replace(f'"{state}"', json.dumps(str(tmp_path / state.lstrip("/"))))
    copy = tmp_path / path.name
    copy.write_text(text, encoding="utf-8")
    settings = load_site_settings(copy)
    settings.node.check_connection_files(str(copy))  # TLS and a site key are configured
    assert settings.state_path == tmp_path / state.lstrip("/")
    assert settings.site.role == "train"


# -- the wiring, by running the one-shot services here -----------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    yield Project(tmp_path_factory.mktemp("compose"))


def test_pki_writes_what_the_server_and_nodes_read(project: Project) -> None:
    owner = {"PKI_OWNER": f"{os.getuid()}:{os.getgid()}"}  # chown to ourselves here
    calls = project.run_script("pki", owner)
    for argv in calls:
        check_cli(argv)
    assert [argv[:2] for argv in calls] == [["certs", "init"], ["certs", "server"]] + [
        ["certs", "site"]
    ] * len(SITES)
    assert command_pairs(script_of("pki")) == {
        ("certs", "init"),
        ("certs", "server"),
        ("certs", "site"),
    }

    server_command = command_of("server")
    certs = project.path("server", option(server_command, "--certs"))
    ServerSecurity(certs, certs / "unused").check()  # ca.pem, server.pem, server.key
    certificate = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    in_certificate = {str(n) for n in names.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in names.get_values_for_type(x509.IPAddress)
    }
    # The nodes reach "server"; the host's coordinator 127.0.0.1 / localhost.
    assert {"server", "127.0.0.1", "localhost"} <= in_certificate
    ca = (certs / "ca.pem").read_bytes()
    for site in SITES:
        raw = tomllib.loads(
            project.path(site, option(command_of(site), "--site-config")).read_text("utf-8")
        )
        key = project.path(site, raw["node"]["key"])
        assert key.is_file() and key.stat().st_mode & 0o077 == 0, f"{site}: private key 0600"
        assert project.path(site, raw["node"]["root_certificates"]).read_bytes() == ca

    before = tree_digest(project.base / "volumes")
    again = project.run_script("pki", owner)
    assert not [argv for argv in again if argv[0] == "certs"], "pki must keep existing keys"
    assert tree_digest(project.base / "volumes") == before


def test_register_uses_the_keys_and_the_server_state(project: Project) -> None:
    if not (project.base / "volumes" / "pki-public").exists():
        project.run_script("pki", {"PKI_OWNER": ""})
    calls = project.run_script("register", {"REGISTER_ATTEMPTS": "1"})
    assert command_pairs(script_of("register")) == {("site", "register")}
    assert [argv[:2] for argv in calls] == [["site", "register"]] * len(SITES)
    server_command = command_of("server")
    server_state = project.path("server", option(server_command, "--state-dir")).resolve()
    server_certs = project.path("server", option(server_command, "--certs"))
    for site, argv in zip(SITES, calls, strict=True):
        context = check_cli(argv)
        public_key = Path(context.params["public_key"])
        assert public_key.is_file(), f"{public_key}: not written by the pki service"
        assert site_name_from_public_key(public_key) == context.params["name"] == site
        assert Path(context.params["ca"]).read_bytes() == (server_certs / "ca.pem").read_bytes()
        assert Path(context.params["state_dir"]).resolve() == server_state
        host, _, port = context.params["superlink"].rpartition(":")
        assert host == "server" and port == option(server_command, "--port")


def test_site_init_prepares_what_the_node_loads(project: Project) -> None:
    if not (project.base / "volumes" / "pki-public").exists():
        project.run_script("pki", {"PKI_OWNER": ""})
    run_settings = load_run_settings(RUN_CONFIG)
    runner = CliRunner()
    small = {"DEMO_TRAIN_CASES": "12", "DEMO_TEST_CASES": "6"}
    for index, site in enumerate(SITES):
        init = f"{site}-init"
        calls = project.run_script(init, small)
        assert [argv[:2] for argv in calls] == [["node", "approve"]]
        context = check_cli(calls[0])
        assert Path(context.params["run_config"]).resolve() == RUN_CONFIG.resolve()
        # Replay the approval in-process, with the init container's paths resolved here.
        config_in_init = services()[init]["environment"]["SITE_CONFIG"]
        argv = list(calls[0])
        argv[argv.index("--site-config") + 1] = str(project.site_config(init, config_in_init))
        result = runner.invoke(build_app(), argv)
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

        # What the node sees through its own mounts.
        node_config = option(command_of(site), "--site-config")
        assert mount_at(services()[site], node_config).host_source == (
            mount_at(services()[init], config_in_init).host_source
        )
        settings = load_site_settings(project.site_config(site, node_config))
        assert settings.site.name == site
        with np.load(settings.data.path) as data:
            assert bool(data["synthetic"]) and int(data["site_index"]) == index
            assert len(data["train_images"]) == 12
        approval = ApprovalStore.for_site(settings).find(config_hash(run_settings), app_hash())
        assert approval is not None, f"{site}: the node would refuse the demo run"

        # Again: the data is kept, the approval stays (idempotent).
        data_file = settings.data.path
        written = data_file.stat().st_mtime_ns
        again = project.run_script(init, small)
        assert [argv[:2] for argv in again] == [["node", "approve"]]
        assert data_file.stat().st_mtime_ns == written
    assert command_pairs(script_of("hospital-a-init")) == {("node", "approve")}


def test_coordinator_submits_what_the_sites_approved() -> None:
    argv = command_of("coordinator")
    context = check_cli(argv)
    assert argv[0] == "run"
    coordinator = services()["coordinator"]
    submitted = mount_at(coordinator, str(context.params["run_config"])).host_source
    for site in SITES:
        approved = services()[f"{site}-init"]["environment"]["RUN_CONFIGS"].split()
        assert [mount_at(services()[f"{site}-init"], p).host_source for p in approved] == [
            submitted
        ]
    assert submitted == RUN_CONFIG.resolve()
    assert context.params["superlink"] == f"server:{SUPERLINK_PORT}"
    runs = mount_at(coordinator, str(context.params["runs_dir"]))
    server_runs = mount_at(services()["server"], option(command_of("server"), "--runs-dir"))
    assert runs.source == server_runs.source and runs.read_only
    ca = mount_at(coordinator, str(Path(context.params["ca"]).parent))
    assert ca.source == "pki-public"
    assert services()["coordinator"]["profiles"] == ["coordinator"]


# -- GPU overlay -----------------------------------------------------------------------------


def test_gpu_overlay() -> None:
    overlay = load_yaml(GPU_FILE)
    merged = merge(compose(), overlay)["services"]
    assert set(overlay["services"]) <= set(services())
    built = {s["image"]: s["build"] for s in merged.values() if "build" in s}
    for name, service in merged.items():
        assert service["image"] in built, f"{name}: {service['image']} is built by no service"
    assert built["consortia-node:cuda"]["args"]["VARIANT"] == "cuda"
    assert built["consortia-node:cuda"]["dockerfile"] == "docker/node.Dockerfile"
    for site in SITES:
        assert merged[site]["image"] == "consortia-node:cuda"
        assert merged[f"{site}-init"]["image"] == "consortia-node:cuda"
        devices = merged[site]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


# -- docs ------------------------------------------------------------------------------------


IMAGE_NAME = re.compile(r"consortia-(server|node):[\w.-]+")


def readme_command_lines() -> list[list[str]]:
    """The command lines of `consortia` in docker/README.md's code blocks: after a
    `consortia` word, or after the image in `docker run ... consortia-*:TAG ARGS`."""
    text = (DOCKER / "README.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["docker", "run"]:
                image = next(i for i, w in enumerate(words) if IMAGE_NAME.fullmatch(w))
                entrypoint = (
                    words[words.index("--entrypoint") + 1] if "--entrypoint" in words else None
                )
                if entrypoint in (None, "consortia") and words[image + 1 :]:
                    found.append(words[image + 1 :])
            elif "consortia" in words:
                found.append(words[words.index("consortia") + 1 :])
    return found


def test_readme_commands_parse() -> None:
    lines = readme_command_lines()
    assert len(lines) >= 8
    for argv in lines:
        check_cli(argv)
    text = (DOCKER / "README.md").read_text(encoding="utf-8")
    for needle in ("--gpus all", "compose.gpu.yaml", "no Docker engine", "ca.key"):
        assert needle in text, f"docker/README.md does not mention {needle!r}"


def test_docker_compose_config() -> None:
    """`docker compose config` validates both files against the Compose specification; it
    needs the docker CLI with its compose plugin, but no engine."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin here")
    for files in ([COMPOSE_FILE], [COMPOSE_FILE, GPU_FILE]):
        args = [arg for path in files for arg in ("-f", str(path))]
        result = subprocess.run(
            [docker, "compose", *args, "config", "-q"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
