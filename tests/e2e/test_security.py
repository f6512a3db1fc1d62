"""Security refusals through the real runtime on 127.0.0.1: a TLS SuperLink that admits
registered site keys only, nodes started with `consortia node start`, the certificate and
registration commands, and a run that one site did not approve."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from consortia.common.crypto.pki import create_ca
from tests.support.builders import NO_DP, roster_of, run_toml, site_toml
from tests.support.cli import consortia, output_of
from tests.support.cli_federation import CliFederation
from tests.support.federation import SiteSpec, start_federation, write_site_configs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RUN = run_toml(
    "sec", rounds=1, min_sites=2, connect_timeout_s=60, training={"batch_size": 8}, privacy=NO_DP
)


def _ca_certificate(federation: CliFederation) -> Path:
    """The consortium CA of the federation (the `federation` fixture is secured)."""
    assert federation.consortium is not None, "the federation was started without TLS"
    return federation.consortium.ca_certificate


def _node(config: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Start a node that is expected to stop by itself with an error."""
    return consortia(
        "node", "start", "--site-config", config, "--num-threads", "1", timeout=timeout
    )


def test_unregistered_key_unknown_ca_and_plaintext_are_refused(
    tmp_path: Path, secured_server: CliFederation
) -> None:
    federation = secured_server
    # A site whose key the coordinator never registered: the SuperLink refuses it, the
    # node stops with a message naming the cause, and the server's log names the key.
    [stranger] = write_site_configs(federation, [SiteSpec("stranger")], tmp_path)
    result = _node(stranger)
    assert result.returncode == 2
    assert "its key is not registered there" in output_of(result)
    superlink_log = (federation.root / "server" / "logs" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log

    # A node that trusts another CA refuses the server's certificate before connecting.
    create_ca(tmp_path / "rogue-ca")
    rogue = stranger.read_text().replace(
        str(_ca_certificate(federation)), str(tmp_path / "rogue-ca" / "ca.pem")
    )
    stranger.write_text(rogue)
    result = _node(stranger)
    assert result.returncode == 2
    assert "the consortium CA" in output_of(result) and "did not issue" in output_of(result)

    # A plaintext node is told that the server speaks TLS.
    plain = tmp_path / "plain.toml"
    plain.write_text(
        site_toml(
            "plain",
            data=tmp_path / "stranger" / "data.npz",
            node={
                "superlink": federation.superlink,
                "insecure": True,
                "state_dir": tmp_path / "plain-state",
            },
        ),
        encoding="utf-8",
    )
    result = _node(plain)
    assert result.returncode == 2
    assert "speaks TLS but this node is configured with node.insecure" in output_of(result)


def test_tls_node_refuses_a_plaintext_server(tmp_path: Path, secured_server: CliFederation) -> None:
    with start_federation(tmp_path / "insecure", secure=False) as insecure:
        # a site of the secured consortium, pointed at the plaintext server
        [config] = write_site_configs(secured_server, [SiteSpec("careful")], tmp_path)
        text = config.read_text().replace(secured_server.superlink, insecure.superlink)
        config.write_text(text)
        result = _node(config)
        assert result.returncode == 2
        assert "does not speak TLS" in output_of(result)


def _records(config: Path) -> list[str]:
    """The lines of a site's node audit log."""
    return (config.parent / "state" / "audit.jsonl").read_text().splitlines()


def test_unapproved_site_is_left_out_and_unlisted_site_never_asked(
    four_sites: CliFederation,
) -> None:
    """a and b approved the run; c is in the roster but did not approve it; d is
    registered, connected and approved it, but the roster does not list it."""
    federation = four_sites
    *approving, refusing, unlisted = federation.site_configs
    earlier = {config: len(_records(config)) for config in (refusing, unlisted)}
    # With three roster trainers secure aggregation would be mandatory at every site, and
    # two sites alone cannot hold a session: this test is about who is asked, so plain.
    config = run_toml(
        "sec",
        rounds=1,
        min_sites=3,
        connect_timeout_s=60,
        training={"batch_size": 8},
        privacy=NO_DP,
        secure_aggregation={"mode": "off"},
        sites=roster_of([*approving, refusing]),
    )
    results = federation.run("unapproved", config, approved_by=[*approving, unlisted])
    assert results["status"] == "completed"
    assert sorted(site["name"] for site in results["sites"]) == ["a", "b"]
    refusals = [
        line
        for line in (results["dir"] / "audit.jsonl").read_text().splitlines()
        if '"site_refused"' in line
    ]
    assert len(refusals) == 1 and "is not approved at this site" in refusals[0]
    # (the federation is shared: only the records written during this run count)
    node_log = "\n".join(_records(refusing)[earlier[refusing] :])
    assert '"run_refused"' in node_log
    # The unlisted site was never asked anything: its node log has no record of the run.
    unlisted_log = "\n".join(_records(unlisted)[earlier[unlisted] :])
    assert '"run_approved"' not in unlisted_log and '"run_refused"' not in unlisted_log
    assert '"node_started"' in "\n".join(_records(unlisted))
    # A study no site approved: the coordinator is told each site's reason (issue 20).
    nobody = federation.root / "nobody.toml"
    nobody.write_text(RUN.replace('name = "sec"', 'name = "nobody"'))
    done = consortia(
        "run",
        nobody,
        "--superlink",
        federation.control,
        "--ca",
        _ca_certificate(federation),
        "--runs-dir",
        federation.runs,
        timeout=300,
    )
    output = output_of(done)
    assert done.returncode != 0, output
    assert "no training site answered" in output
    for name in ("a", "b", "c", "d"):
        assert f"{name} (node " in output, output
    assert output.count("is not approved at this site") == 4, output


def test_certificate_and_registration_commands(
    tmp_path: Path, secured_server: CliFederation
) -> None:
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
        done = consortia(*step)
        assert done.returncode == 0, output_of(done)
    assert oct((pki / "site" / "hospital-z.key").stat().st_mode & 0o777) == "0o600"
    again = consortia("certs", "site", "hospital-z", "--out", pki / "site")
    assert again.returncode == 2 and "hospital-z.key" in again.stderr  # never overwritten

    # the running (shared) server: its state folder holds the site registry
    state_dir = secured_server.root / "server"
    register = consortia(
        "site",
        "register",
        pki / "site" / "hospital-z.pub",
        "--superlink",
        secured_server.control,
        "--state-dir",
        state_dir,
        "--ca",
        _ca_certificate(secured_server),
    )
    assert register.returncode == 0, output_of(register)
    assert "hospital-z" in register.stdout and "node id" in register.stdout
    listed = consortia("site", "list", "--state-dir", state_dir)
    assert "hospital-z" in listed.stdout
