"""Before a node starts its SuperNode: can it reach the server, over TLS, trusting only
the consortium CA? Flower's SuperNode retries forever on a TLS mismatch; this check turns
the mismatch into one clear message at start-up instead."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

from consortia.common.errors import ConsortiaError

__all__ = ["ConnectionCheckError", "check_server_connection"]

logger = logging.getLogger("consortia.client.node.supernode")


class ConnectionCheckError(ConsortiaError):
    """The server answers, but not in a way this node may talk to it."""


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_server_connection(address: str, ca: Path | None, *, timeout_s: float = 10.0) -> bool:
    """True when the server at `address` answered the way the node expects (TLS with a
    certificate from `ca`; plaintext when `ca` is None); False when nobody answers yet
    (the SuperNode keeps retrying). Raises `ConnectionCheckError` on a mismatch."""
    host, port = _split(address)
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as err:
        logger.warning("no server answers at %s yet (%s); the node keeps trying", address, err)
        return False
    with raw:
        if ca is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            try:
                with context.wrap_socket(raw, server_hostname=host):
                    pass
            except (ssl.SSLError, OSError):
                return True  # no TLS handshake: a plaintext server, as configured
            raise ConnectionCheckError(
                f"the server at {address} speaks TLS but this node is configured with "
                "node.insecure = true; set node.root_certificates to the consortium CA "
                "certificate and node.key to the site's key"
            )
        context = ssl.create_default_context(cafile=str(ca))
        try:
            with context.wrap_socket(raw, server_hostname=host):
                return True
        except ssl.SSLCertVerificationError as err:
            raise ConnectionCheckError(
                f"the server at {address} presented a certificate that the consortium CA "
                f"({ca}) did not issue or that does not name {host}: {err.verify_message}; "
                "refusing to connect"
            ) from None
        except (ssl.SSLError, ConnectionResetError) as err:
            raise ConnectionCheckError(
                f"the server at {address} does not speak TLS ({err}); refusing a plaintext "
                "connection (the coordinator must start the server without --insecure)"
            ) from None
        except OSError as err:  # e.g. a timeout in the middle of the handshake
            raise ConnectionCheckError(
                f"the server at {address} did not complete a TLS handshake ({err})"
            ) from None
