"""The node's start-up check of its server connection, against real TLS and plaintext
servers on 127.0.0.1 (certificates from our own PKI)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortia.client.node.connection_check import ConnectionCheckError, check_server_connection
from consortia.common.crypto.pki import create_ca, issue_server_certificate
from consortia.common.processes import free_port

# The fixture `pki`: the server's certificate and key, and the CA file of another consortium.
Pki = tuple[Path, Path, Path]


def _serve(listener: socket.socket, context: ssl.SSLContext | None, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            try:
                if context is None:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                else:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)
            except (OSError, ssl.SSLError):
                pass


@pytest.fixture()
def pki(tmp_path: Path) -> Pki:
    create_ca(tmp_path / "ca")
    server = issue_server_certificate(tmp_path / "ca", tmp_path / "server", ["127.0.0.1"])
    create_ca(tmp_path / "other")
    return server.certificate, server.key, tmp_path / "other" / "ca.pem"


def _server(tls: ssl.SSLContext | None) -> Iterator[str]:
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, tls, stop), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.fixture()
def tls_server(pki: Pki) -> Iterator[str]:
    cert, key, _ = pki
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    yield from _server(context)


@pytest.fixture()
def plain_server() -> Iterator[str]:
    yield from _server(None)


def test_tls_server_with_the_consortium_ca_passes(
    tls_server: str, pki: Pki, tmp_path: Path
) -> None:
    assert check_server_connection(tls_server, tmp_path / "ca" / "ca.pem") is True


def test_certificate_from_another_ca_is_refused(tls_server: str, pki: Pki) -> None:
    with pytest.raises(ConnectionCheckError, match="did not issue"):
        check_server_connection(tls_server, pki[2])


def test_plaintext_server_is_refused_by_a_tls_node(
    plain_server: str, tmp_path: Path, pki: Pki
) -> None:
    with pytest.raises(ConnectionCheckError, match="does not speak TLS"):
        check_server_connection(plain_server, tmp_path / "ca" / "ca.pem")


def test_insecure_node_is_told_the_server_wants_tls(tls_server: str) -> None:
    with pytest.raises(ConnectionCheckError, match="speaks TLS"):
        check_server_connection(tls_server, None)


def test_insecure_node_and_plain_server_pass(plain_server: str) -> None:
    assert check_server_connection(plain_server, None) is True


def test_no_server_yet_is_not_an_error(tmp_path: Path, pki: Pki) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert check_server_connection(address, tmp_path / "ca" / "ca.pem", timeout_s=2) is False
