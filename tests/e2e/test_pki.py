"""The consortium CA, the server certificate, site keys and `consortia certs`: real keys and
files, Flower's own key loaders, and a real TLS SuperLink."""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from consortia.common.crypto.pki import (
    CAFiles,
    PKIError,
    ca_key_is_encrypted,
    create_ca,
    create_site_key,
    issue_server_certificate,
    key_matches_certificate,
    load_certificate,
    load_server_key,
    load_site_private_key,
    load_site_public_key,
    public_key_fingerprint,
    verify_certificate_chain,
)
from consortia.common.processes import ManagedProcess, ProcessGroup, free_port, process_env
from consortia.server.launch.certs_cli import PASSPHRASE_ENV, certs_app


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def ca(tmp_path: Path) -> CAFiles:
    return create_ca(tmp_path / "ca")


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


# -- CA and server certificate ---------------------------------------------------------


def test_ca_and_server_certificate_form_a_verified_chain(tmp_path: Path, ca: CAFiles) -> None:
    files = issue_server_certificate(
        tmp_path / "ca", tmp_path / "server", ["127.0.0.1", "localhost", "Coord.Example.org", "::1"]
    )
    assert {p.name for p in (tmp_path / "server").iterdir()} == {
        "server.key",
        "server.pem",
        "ca.pem",
    }
    assert files.ca_certificate.read_bytes() == ca.certificate.read_bytes()
    ca_cert = load_certificate(ca.certificate)
    cert = load_certificate(files.certificate)
    for host in ("127.0.0.1", "localhost", "coord.example.org", "[::1]"):
        verify_certificate_chain(cert, ca_cert, host=host)

    constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "coord.example.org"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    server_key = load_server_key(files.key)
    assert server_key.curve.name == "secp384r1"
    assert key_matches_certificate(server_key, cert)
    assert not key_matches_certificate(server_key, ca_cert)
    assert files.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8

    with pytest.raises(PKIError, match=r"does not name host 'other\.example\.org'"):
        verify_certificate_chain(cert, ca_cert, host="other.example.org")


def test_certificate_of_another_ca_is_refused(tmp_path: Path, ca: CAFiles) -> None:
    server = issue_server_certificate(tmp_path / "ca", tmp_path / "server", ["localhost"])
    cert = load_certificate(server.certificate)
    other_name = load_certificate(create_ca(tmp_path / "other", name="Other CA").certificate)
    with pytest.raises(PKIError, match="issued by 'CN=Consortia CA', not by this consortium CA"):
        verify_certificate_chain(cert, other_name)
    same_name = load_certificate(create_ca(tmp_path / "impostor").certificate)
    with pytest.raises(PKIError, match="bad signature"):
        verify_certificate_chain(cert, same_name)
    with pytest.raises(PKIError, match="is not a CA certificate"):
        verify_certificate_chain(cert, cert)


def test_expired_and_not_yet_valid_certificates_are_refused(tmp_path: Path, ca: CAFiles) -> None:
    ca_cert = load_certificate(ca.certificate)
    now = datetime.now(UTC)
    old = issue_server_certificate(
        tmp_path / "ca",
        tmp_path / "old",
        ["localhost"],
        valid_from=now - timedelta(days=30),
        days=10,
    )
    with pytest.raises(PKIError, match="expired on"):
        verify_certificate_chain(load_certificate(old.certificate), ca_cert)
    future = issue_server_certificate(
        tmp_path / "ca", tmp_path / "future", ["localhost"], valid_from=now + timedelta(days=2)
    )
    future_cert = load_certificate(future.certificate)
    with pytest.raises(PKIError, match="not yet valid"):
        verify_certificate_chain(future_cert, ca_cert)
    verify_certificate_chain(future_cert, ca_cert, at=now + timedelta(days=3), host="localhost")
    with pytest.raises(PKIError, match="the CA certificate expired"):
        verify_certificate_chain(future_cert, ca_cert, at=now + timedelta(days=3651))
    with pytest.raises(PKIError, match="at least 1 day"):
        issue_server_certificate(tmp_path / "ca", tmp_path / "x", ["localhost"], days=0)
    # A server certificate never outlives its CA.
    long = issue_server_certificate(tmp_path / "ca", tmp_path / "long", ["h"], days=100_000)
    assert load_certificate(long.certificate).not_valid_after_utc == ca_cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("host", "problem"),
    [("localhost:9092", "without port"), ("https://x.org", "without port"), ("a b", "not a DNS")],
)
def test_bad_server_hosts_are_refused(tmp_path: Path, ca: CAFiles, host: str, problem: str) -> None:
    with pytest.raises(PKIError, match=problem):
        issue_server_certificate(tmp_path / "ca", tmp_path / "server", [host])
    assert not (tmp_path / "server").exists()


def test_encrypted_ca_key_needs_its_passphrase(tmp_path: Path) -> None:
    create_ca(tmp_path / "ca", passphrase=b"correct horse")
    assert ca_key_is_encrypted(tmp_path / "ca")
    assert b"ENCRYPTED" in (tmp_path / "ca" / "ca.key").read_bytes()
    with pytest.raises(PKIError, match="encrypted; give its passphrase"):
        issue_server_certificate(tmp_path / "ca", tmp_path / "s", ["localhost"])
    with pytest.raises(PKIError, match="wrong passphrase"):
        issue_server_certificate(tmp_path / "ca", tmp_path / "s", ["localhost"], ca_passphrase=b"x")
    issue_server_certificate(
        tmp_path / "ca", tmp_path / "s", ["localhost"], ca_passphrase=b"correct horse"
    )
    assert not ca_key_is_encrypted(create_ca(tmp_path / "plain").key.parent)


def test_ca_folder_problems_are_named(tmp_path: Path, ca: CAFiles) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PKIError, match=r"empty: no ca.key here"):
        issue_server_certificate(tmp_path / "empty", tmp_path / "s", ["localhost"])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(ca.key, mixed / "ca.key")
    shutil.copy(create_ca(tmp_path / "other").certificate, mixed / "ca.pem")
    with pytest.raises(PKIError, match=r"ca\.key is not the key of ca\.pem"):
        issue_server_certificate(mixed, tmp_path / "s", ["localhost"])
    (mixed / "ca.pem").write_text("garbage\n")
    with pytest.raises(PKIError, match=r"mixed/ca.pem: not a PEM certificate"):
        issue_server_certificate(mixed, tmp_path / "s", ["localhost"])


# -- files: permissions, no overwriting ------------------------------------------------


def test_private_keys_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    with umask(0):
        ca = create_ca(tmp_path / "ca")
        server = issue_server_certificate(tmp_path / "ca", tmp_path / "server", ["localhost"])
        site = create_site_key(tmp_path / "site", "hospital-a")
        again = create_site_key(tmp_path / "site", "hospital-a", force=True)
    assert mode(tmp_path / "ca") == 0o700
    for private in (ca.key, server.key, site.private_key, again.private_key):
        assert mode(private) == 0o600, private
    for public in (ca.certificate, server.certificate, server.ca_certificate, site.public_key):
        assert mode(public) == 0o644, public


def test_nothing_is_overwritten_without_force(tmp_path: Path, ca: CAFiles) -> None:
    ca_key = ca.key.read_bytes()
    with pytest.raises(PKIError, match=r"ca.key, .*ca.pem already exist; refusing to overwrite"):
        create_ca(tmp_path / "ca")
    assert ca.key.read_bytes() == ca_key

    site = create_site_key(tmp_path / "site", "hospital-a")
    private = site.private_key.read_bytes()
    with pytest.raises(PKIError, match=r"hospital-a.key, .*hospital-a.pub already exist"):
        create_site_key(tmp_path / "site", "hospital-a")
    assert site.private_key.read_bytes() == private
    replaced = create_site_key(tmp_path / "site", "hospital-a", force=True)
    assert replaced.private_key.read_bytes() != private
    assert replaced.fingerprint != site.fingerprint
    assert sorted(p.name for p in site.private_key.parent.iterdir()) == [
        "hospital-a.key",
        "hospital-a.pub",
    ]  # no temporary files left behind

    # One existing target is enough to refuse, and nothing else is written.
    (tmp_path / "site" / "hospital-b.pub").write_text("mine\n")
    with pytest.raises(PKIError, match=r"hospital-b.pub already exists"):
        create_site_key(tmp_path / "site", "hospital-b")
    assert not (tmp_path / "site" / "hospital-b.key").exists()

    server = issue_server_certificate(tmp_path / "ca", tmp_path / "server", ["localhost"])
    with pytest.raises(PKIError, match=r"server\.key, .*server\.pem already exist"):
        issue_server_certificate(tmp_path / "ca", tmp_path / "server", ["localhost"])
    # ca.pem beside the server files is left alone when it is this CA's, refused otherwise.
    create_ca(tmp_path / "other")
    server.key.unlink()
    server.certificate.unlink()
    with pytest.raises(PKIError, match="is another CA's certificate"):
        issue_server_certificate(tmp_path / "other", tmp_path / "server", ["localhost"])
    assert not server.key.exists()
    issue_server_certificate(tmp_path / "ca", tmp_path / "server", ["localhost"])


def test_names_are_validated(tmp_path: Path) -> None:
    for bad in ("", "../evil", "a b", "-x", "x" * 65):
        with pytest.raises(PKIError, match="invalid site name"):
            create_site_key(tmp_path, bad)
    assert list(tmp_path.iterdir()) == []


# -- site keys -------------------------------------------------------------------------


def test_site_key_loads_exactly_as_flower_loads_it(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    files = create_site_key(tmp_path, "hospital-a")
    raw = serialization.load_ssh_private_key(files.private_key.read_bytes(), None)
    assert isinstance(raw, ec.EllipticCurvePrivateKey)
    assert raw.curve.name == "secp384r1"
    keys = _try_setup_client_authentication(
        argparse.Namespace(
            auth_supernode_private_key=str(files.private_key), auth_supernode_public_key=None
        )
    )
    assert keys is not None
    assert public_key_fingerprint(keys[1]) == files.fingerprint
    assert try_load_public_key(files.public_key)  # `flwr supernode register` accepts it

    line = files.public_key.read_text()
    kind, blob, comment = line.split()
    assert (kind, comment) == ("ecdsa-sha2-nistp384", "consortia-site:hospital-a")
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode()
    assert files.fingerprint == "SHA256:" + digest.rstrip("=")
    public = load_site_public_key(files.public_key)
    assert (
        public
        == load_site_public_key(line.encode())
        == load_site_private_key(files.private_key).public_key()
    )
    if shutil.which("ssh-keygen"):  # the same fingerprint as OpenSSH prints
        out = subprocess.run(
            ["ssh-keygen", "-lf", str(files.public_key)], capture_output=True, text=True, check=True
        )
        assert out.stdout.split()[1] == files.fingerprint


# A throw-away P-384 key that `ssh-keygen -N secret` encrypted (writing one with
# cryptography would need the bcrypt package).
LOCKED_KEY = b"""\
-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABD72f4IAR
2UqAxMU88/9IWJAAAAEAAAAAEAAACIAAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlz
dHAzODQAAABhBDh2a8ipQQ1Q5W3TxzQaw26RrwrHj1xA97bgiztMfznLn0cTExyJ9+ZSZU
vduE0urD5GUlRvVXM35HKlsFBMxRNW34Wintd7nSI6PhYExbpzpvqxiFP2scr2C0sLR2GR
FwAAANBWRL6PHCBDOra4dw80dLJ5tegIEj89RWA48soUh3W1SQxFK9LrRD7rAugFa6DoeW
zYm+V9KHPTozuYuuFD79GBXus+qcwvHIooEOgKyCVswPvjs7zvaQgV8hdBgb8qz2M3c1hA
RjGj8Ff0pcv4ncBVzlscZgXTUmkJBIhp4w7CCvgillqYPQHph0qmDgiGdovmLFDJc0KmaS
yVuMBgM28kSSybVDvPoznA+NIdTanb2V9RgdZ87OMrwHZQzPE6WGyUAFfPBtdGivM5W0oz
Rjv1
-----END OPENSSH PRIVATE KEY-----
"""


def _openssh_private(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def test_unusable_site_keys_are_refused_with_the_reason(tmp_path: Path) -> None:
    cases = {
        "garbage.key": (b"not a key at all\n", "not an OpenSSH private key"),
        "empty.key": (b"", "file is empty"),
        "rsa.key": (
            _openssh_private(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "an RSA key; Flower's SuperNode authentication needs an ECDSA key",
        ),
        "ed.key": (_openssh_private(ed25519.Ed25519PrivateKey.generate()), "an Ed25519 key"),
        "pem.key": (
            ec.generate_private_key(ec.SECP384R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "a PEM key: Flower needs OpenSSH format",
        ),
        "locked.key": (
            LOCKED_KEY,
            "protected by a passphrase",
        ),
    }
    for name, (data, problem) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PKIError, match=problem) as caught:
            load_site_private_key(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)
    with pytest.raises(PKIError, match="site private key not found"):
        load_site_private_key(tmp_path / "missing.key")

    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "rsa.pub").write_bytes(
        rsa_pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(PKIError, match=r"rsa.pub: the site public key is an RSA key"):
        load_site_public_key(tmp_path / "rsa.pub")
    with pytest.raises(PKIError, match="not an OpenSSH public key"):
        load_site_public_key(b"ssh-nothing AAAA")


def test_unusable_server_keys_and_certificates_are_refused(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.key").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(PKIError, match=r"rsa\.key: not an EC key \(RSA\); Consortia needs an EC"):
        load_server_key(tmp_path / "rsa.key")
    (tmp_path / "junk.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(PKIError, match=r"junk.key: cannot load the private key"):
        load_server_key(tmp_path / "junk.key")
    (tmp_path / "junk.pem").write_bytes(b"hello\n")
    with pytest.raises(PKIError, match=r"junk.pem: not a PEM certificate"):
        load_certificate(tmp_path / "junk.pem")
    with pytest.raises(PKIError, match="is a folder"):
        load_certificate(tmp_path)


# -- the CLI ---------------------------------------------------------------------------


def test_certs_cli_creates_a_ca_a_server_certificate_and_a_site_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(certs_app, ["init"])
    assert result.exit_code == 0, result.output
    assert "consortia-pki/ca/ca.pem" in result.output
    assert "Keep it private" in result.output

    result = runner.invoke(certs_app, ["server", "--out", "srv"])
    assert result.exit_code == 0, result.output
    cert = load_certificate(tmp_path / "srv" / "server.pem")
    verify_certificate_chain(cert, load_certificate(tmp_path / "srv" / "ca.pem"), host="127.0.0.1")
    verify_certificate_chain(cert, load_certificate(tmp_path / "srv" / "ca.pem"), host="localhost")
    assert "consortia server start --certs srv" in result.output

    result = runner.invoke(certs_app, ["site", "hospital-a", "--out", "keys"])
    assert result.exit_code == 0, result.output
    fingerprint = public_key_fingerprint(load_site_public_key(tmp_path / "keys" / "hospital-a.pub"))
    assert fingerprint in result.output
    assert "consortia site register hospital-a.pub" in result.output

    result = runner.invoke(certs_app, ["site", "hospital-a", "--out", "keys"])
    assert isinstance(result.exception, PKIError)
    assert "already exist" in str(result.exception)
    assert (
        runner.invoke(certs_app, ["site", "hospital-a", "--out", "keys", "--force"]).exit_code == 0
    )
    assert public_key_fingerprint(load_site_public_key(tmp_path / "keys" / "hospital-a.pub")) != (
        fingerprint
    )


def test_certs_cli_encrypted_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    ca_dir, out = str(tmp_path / "ca"), str(tmp_path / "srv")
    result = runner.invoke(certs_app, ["init", "--dir", ca_dir, "--encrypt"], input="pw\npw\n")
    assert result.exit_code == 0, result.output
    assert ca_key_is_encrypted(tmp_path / "ca")
    result = runner.invoke(certs_app, ["server", "--ca-dir", ca_dir, "--out", out], input="no\n")
    assert isinstance(result.exception, PKIError)
    assert "wrong passphrase" in str(result.exception)
    monkeypatch.setenv(PASSPHRASE_ENV, "pw")
    result = runner.invoke(
        certs_app, ["server", "--ca-dir", ca_dir, "--out", out, "--host", "a.org"]
    )
    assert result.exit_code == 0, result.output
    names = load_certificate(tmp_path / "srv" / "server.pem").extensions
    alternative = names.get_extension_for_class(x509.SubjectAlternativeName).value
    # the loopback names are always there: the Control API and the ServerApps use them
    assert alternative.get_values_for_type(x509.DNSName) == ["a.org", "localhost"]
    assert [str(ip) for ip in alternative.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


# -- a real SuperLink with the generated certificate -------------------------------------


def _handshake(port: int, cafile: Path, host: str, deadline: float) -> str:
    context = ssl.create_default_context(cafile=str(cafile))
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=2) as sock,
                context.wrap_socket(sock, server_hostname=host) as tls,
            ):
                return str(tls.version())
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.e2e
def test_superlink_serves_tls_with_the_generated_certificate(tmp_path: Path, ca: CAFiles) -> None:
    server = issue_server_certificate(
        tmp_path / "ca", tmp_path / "server", ["127.0.0.1", "localhost"]
    )
    other = create_ca(tmp_path / "other")
    port = free_port()
    args = [
        str(Path(sys.executable).with_name("flower-superlink")),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        ":memory:",
        "--disable-runtime-dependency-installation",
        "--ssl-ca-certfile",
        str(server.ca_certificate),
        "--ssl-certfile",
        str(server.certificate),
        "--ssl-keyfile",
        str(server.key),
    ]
    assert "--insecure" not in args
    env = process_env(FLWR_HOME=str(tmp_path / "flwr"))
    with ProcessGroup() as group:
        process = group.start(
            ManagedProcess("SuperLink", args, tmp_path / "superlink.log", env=env)
        )
        deadline = time.monotonic() + 60
        try:
            assert _handshake(port, server.ca_certificate, "127.0.0.1", deadline).startswith("TLS")
            assert _handshake(port, server.ca_certificate, "localhost", deadline).startswith("TLS")
            with pytest.raises(ssl.SSLCertVerificationError):
                _handshake(port, other.certificate, "127.0.0.1", deadline)
        finally:
            process.check_alive()  # it ran on our certificate, not exited on it
