"""Test helper for tests/unit/test_docker.py: reading docker/ (compose file, Dockerfiles,
scripts) and a sandbox `Project` that runs the one-shot services' scripts with every volume
as a folder; no Docker engine needed."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

from consortia.common.cli import build_app

ROOT = Path(__file__).resolve().parents[2]
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
CONTROL_PORT = 9093  # the loopback Control API inside the server's namespace
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
    from consortia.server.launch.certs_cli import certs_app

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
