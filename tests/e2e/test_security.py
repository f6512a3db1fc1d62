"""Security refusals through the real runtime on 127.0.0.1: a TLS SuperLink that admits
registered site keys only, nodes started with `consortia node start`, the certificate and
registration commands, and a run that one site did not approve."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from consortia.common.config.roster import site_fingerprint
from consortia.common.config.settings import load_site_settings
from consortia.common.crypto.pki import create_ca
from consortia.common.demo.data import DemoDataSettings, write_site_npz
from tests.support.cli_federation import CLI, CliFederation

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RUN = (
    '[run]\nname = "sec"\nrounds = 1\nmin_sites = 2\nconnect_timeout_s = 60\n'
    "[run.model]\nchannels = [8, 16]\nstrides = [2]\nnorm_groups = 4\nnum_res_units = 0\n"
    "[run.training]\nbatch_size = 8\n[run.privacy]\nenabled = false\n"
)


def _site(tmp_path: Path, federation: CliFederation, name: str, index: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    write_site_npz(
        folder / "data.npz", index, DemoDataSettings(image_size=32, train_cases=16, test_cases=8)
    )
    return federation.site_config(
        folder, name, "train", "data.npz", "[privacy]\nallow_non_private = true\n"
    )


def _ca_certificate(federation: CliFederation) -> Path:
    """The consortium CA of the federation (the `federation` fixture is secured)."""
    assert federation.consortium is not None, "the federation was started without TLS"
    return federation.consortium.ca_certificate


def _node(config: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Start a node that is expected to stop by itself with an error."""
    return subprocess.run(
        [*CLI, "node", "start", "--site-config", str(config), "--num-threads", "1"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_unregistered_key_unknown_ca_and_plaintext_are_refused(
    tmp_path: Path, federation: CliFederation
) -> None:
    federation.start_server()
    # A site whose key the coordinator never registered: the SuperLink refuses it, the
    # node stops with a message naming the cause, and the server's log names the key.
    stranger = _site(tmp_path, federation, "stranger", 0)
    result = _node(stranger)
    assert result.returncode == 2
    assert "its key is not registered there" in (result.stdout + result.stderr)
    superlink_log = (tmp_path / "server" / "logs" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log

    # A node that trusts another CA refuses the server's certificate before connecting.
    create_ca(tmp_path / "rogue-ca")
    rogue = stranger.read_text().replace(
        str(_ca_certificate(federation)), str(tmp_path / "rogue-ca" / "ca.pem")
    )
    stranger.write_text(rogue)
    result = _node(stranger)
    assert result.returncode == 2
    assert "the consortium CA" in (result.stdout + result.stderr) and "did not issue" in (
        result.stdout + result.stderr
    )

    # A plaintext node is told that the server speaks TLS.
    plain = tmp_path / "plain.toml"
    plain.write_text(
        f'[site]\nname = "plain"\n[data]\npath = "{tmp_path / "stranger" / "data.npz"}"\n'
        f'[node]\nsuperlink = "{federation.superlink}"\ninsecure = true\n'
        f'state_dir = "{tmp_path / "plain-state"}"\n',
        encoding="utf-8",
    )
    result = _node(plain)
    assert result.returncode == 2
    assert "speaks TLS but this node is configured with node.insecure" in (
        result.stdout + result.stderr
    )


def test_tls_node_refuses_a_plaintext_server(tmp_path: Path) -> None:
    insecure = CliFederation(tmp_path / "insecure", secure=False)
    secure = CliFederation(tmp_path / "secure")
    try:
        insecure.start_server()
        config = _site(tmp_path, secure, "careful", 0)
        text = config.read_text().replace(secure.superlink, insecure.superlink)
        config.write_text(text)
        result = _node(config)
        assert result.returncode == 2
        assert "does not speak TLS" in (result.stdout + result.stderr)
    finally:
        insecure.stop()


def _roster(configs: list[Path]) -> str:
    """`[[run.sites]]` tables listing these sites with their keys' fingerprints."""
    tables = []
    for config in configs:
        site = load_site_settings(config)
        tables.append(
            f'[[run.sites]]\nname = "{site.site.name}"\n'
            f'fingerprint = "{site_fingerprint(site.node.key)}"\nrole = "train"\n'
        )
    return "".join(tables)


def test_unapproved_site_is_left_out_and_unlisted_site_never_asked(
    tmp_path: Path, federation: CliFederation
) -> None:
    """a and b approved the run; c is in the roster but did not approve it; d is
    registered, connected and approved it, but the roster does not list it."""
    federation.start_server()
    approving = [_site(tmp_path, federation, name, i) for i, name in enumerate(["a", "b"])]
    refusing = _site(tmp_path, federation, "c", 2)
    unlisted = _site(tmp_path, federation, "d", 3)
    federation.start_nodes([*approving, refusing, unlisted])
    # With three roster trainers secure aggregation would be mandatory at every site, and
    # two sites alone cannot hold a session: this test is about who is asked, so plain.
    plain = '[run.secure_aggregation]\nmode = "off"\n'
    config = RUN.replace("min_sites = 2", "min_sites = 3") + plain + _roster([*approving, refusing])
    results = federation.run("unapproved", config, approved_by=[*approving, unlisted])
    assert results["status"] == "completed"
    assert sorted(site["name"] for site in results["sites"]) == ["a", "b"]
    refusals = [
        line
        for line in (results["dir"] / "audit.jsonl").read_text().splitlines()
        if '"site_refused"' in line
    ]
    assert len(refusals) == 1 and "is not approved at this site" in refusals[0]
    node_log = (tmp_path / "c" / "state" / "audit.jsonl").read_text()
    assert '"run_refused"' in node_log
    # The unlisted site was never asked anything: its node log has no record of the run.
    unlisted_log = (tmp_path / "d" / "state" / "audit.jsonl").read_text()
    assert '"run_approved"' not in unlisted_log and '"run_refused"' not in unlisted_log
    assert '"node_started"' in unlisted_log
    # A study no site approved: the coordinator is told each site's reason (issue 20).
    nobody = tmp_path / "nobody.toml"
    nobody.write_text(RUN.replace('name = "sec"', 'name = "nobody"'))
    done = subprocess.run(
        [
            *CLI,
            "run",
            str(nobody),
            "--superlink",
            federation.control,
            "--ca",
            str(_ca_certificate(federation)),
            "--runs-dir",
            str(federation.runs),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "no training site answered" in output
    for name in ("a", "b", "c", "d"):
        assert f"{name} (node " in output, output
    assert output.count("is not approved at this site") == 4, output


def test_certificate_and_registration_commands(tmp_path: Path, federation: CliFederation) -> None:
    pki = tmp_path / "cli-pki"
    steps = [
        ["certs", "init", "--dir", str(pki / "ca")],
        [
            "certs",
            "server",
            "--host",
            "127.0.0.1",
            "--ca-dir",
            str(pki / "ca"),
            "--out",
            str(pki / "server"),
        ],
        ["certs", "site", "hospital-z", "--out", str(pki / "site")],
    ]
    for step in steps:
        done = subprocess.run([*CLI, *step], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    assert oct((pki / "site" / "hospital-z.key").stat().st_mode & 0o777) == "0o600"
    again = subprocess.run(
        [*CLI, "certs", "site", "hospital-z", "--out", str(pki / "site")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "hospital-z.key" in again.stderr  # never overwritten

    federation.start_server()
    register = subprocess.run(
        [
            *CLI,
            "site",
            "register",
            str(pki / "site" / "hospital-z.pub"),
            "--superlink",
            federation.control,
            "--state-dir",
            str(tmp_path / "server"),
            "--ca",
            str(_ca_certificate(federation)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert register.returncode == 0, register.stdout + register.stderr
    assert "hospital-z" in register.stdout and "node id" in register.stdout
    listed = subprocess.run(
        [*CLI, "site", "list", "--state-dir", str(tmp_path / "server")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "hospital-z" in listed.stdout
