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

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from typer.testing import CliRunner

from consortia.common.audit.approvals import ApprovalStore
from consortia.common.cli import build_app
from consortia.common.config.settings import load_run_settings, load_site_settings
from consortia.common.wire.run_identity import app_hash, config_hash
from consortia.server.registry.server_security import ServerSecurity
from consortia.server.registry.site_registry import site_name_from_public_key
from tests.support.docker_files import (
    BASE_IMAGE,
    COMPOSE_FILE,
    CONDITIONS,
    CONTROL_PORT,
    DOCKER,
    DOCKERFILES,
    GPU_FILE,
    ROOT,
    RUN_CONFIG,
    SCRIPTS,
    SITE_CONFIGS,
    SITE_PATH_FIELDS,
    SITES,
    SUPERLINK_PORT,
    TORCH_VERSION,
    Dockerfile,
    Project,
    builders,
    check_cli,
    command_of,
    command_pairs,
    compose,
    dockerfile_of,
    entrypoint_of,
    image_of,
    load_yaml,
    merge,
    mount_at,
    mounts,
    node_services,
    one_shot_services,
    option,
    script_of,
    services,
    tree_digest,
)

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
        if service.get("network_mode") == "service:server":
            # The loopback Control API is reachable only inside the server's namespace.
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
    assert option(command, "--control-port") == str(CONTROL_PORT)
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
        assert host == "127.0.0.1" and port == option(server_command, "--control-port")
    assert services()["register"]["network_mode"] == "service:server"


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
    assert context.params["superlink"] == f"127.0.0.1:{CONTROL_PORT}"
    assert coordinator["network_mode"] == "service:server"
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
