"""The coordinator's security material: TLS files and the registry of site keys.

`consortia server start` reads it from disk and hands it to the ServerApp (which Flower
starts as a child of the SuperLink) through environment variables; a SuperLink started
with `--insecure` passes none, and the ServerApp then runs without signature checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from consortia.common.errors import ConfigError

__all__ = [
    "CA_FILE",
    "CERTS_DIR_ENV",
    "DEFAULT_SERVER_CERTS",
    "REGISTRY_DIR_ENV",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "ServerSecurity",
    "registry_dir",
]

CERTS_DIR_ENV = "CONSORTIA_SERVER_CERTS"
REGISTRY_DIR_ENV = "CONSORTIA_SITE_REGISTRY"
CA_FILE = "ca.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
# Where `consortia certs server` writes by default, relative to the working folder.
DEFAULT_SERVER_CERTS = Path("consortia-pki") / "server"


def registry_dir(state_dir: Path) -> Path:
    """The registry of site public keys inside the server's state folder."""
    return state_dir / "sites"


@dataclass(frozen=True)
class ServerSecurity:
    """Where the server's certificate, key, CA certificate and site registry live."""

    certs_dir: Path
    registry_dir: Path

    @property
    def ca(self) -> Path:
        return self.certs_dir / CA_FILE

    @property
    def certificate(self) -> Path:
        return self.certs_dir / SERVER_CERT_FILE

    @property
    def key(self) -> Path:
        return self.certs_dir / SERVER_KEY_FILE

    def check(self) -> ServerSecurity:
        """Raise a ConfigError naming the first missing file; returns self."""
        for path in (self.ca, self.certificate, self.key):
            if not path.is_file():
                raise ConfigError(
                    f"{path}: not found; create the server's certificate with "
                    f"`consortia certs server --host HOST --out {self.certs_dir}` "
                    "(or start with --insecure for a local experiment)"
                )
        return self

    def env(self) -> dict[str, str]:
        """Environment variables that carry this to the ServerApp."""
        return {
            CERTS_DIR_ENV: str(self.certs_dir.resolve()),
            REGISTRY_DIR_ENV: str(self.registry_dir.resolve()),
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSecurity | None:
        """What `env()` carried; None for an insecure server."""
        environ = os.environ if environ is None else environ
        certs = environ.get(CERTS_DIR_ENV)
        registry = environ.get(REGISTRY_DIR_ENV)
        if not certs or not registry:
            return None
        return cls(Path(certs), Path(registry)).check()
