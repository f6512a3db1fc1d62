"""A whole consortium's security set-up on one machine, for `consortia demo` and tests:
the same steps a real consortium takes (CA, server certificate, one key pair per site,
registration with the running server, each site approving the run), in one folder."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

from consortia.common.audit.approvals import ApprovalStore
from consortia.common.config.settings import RunSettings, SiteSettings
from consortia.common.crypto.pki import create_ca, issue_server_certificate
from consortia.common.crypto.site_keys import create_site_key
from consortia.server.control import SuperLinkConnection
from consortia.server.registry.server_security import ServerSecurity, registry_dir
from consortia.server.registry.site_admin import register_site
from consortia.server.registry.site_registry import SiteRegistry

__all__ = ["LocalConsortium", "SiteKeys"]


@dataclass(frozen=True)
class SiteKeys:
    """Where one site's key pair lives (the private key stays in the site's folder)."""

    name: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class LocalConsortium:
    """The PKI of a local consortium under `root`: `ca/`, `server/`."""

    root: Path
    server_state: Path

    @property
    def security(self) -> ServerSecurity:
        return ServerSecurity(self.root / "server", registry_dir(self.server_state))

    @property
    def ca_certificate(self) -> Path:
        return self.security.ca

    @classmethod
    def create(
        cls, root: Path, server_state: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> LocalConsortium:
        """Create the CA and the server's certificate for `hosts`."""
        create_ca(root / "ca")
        issue_server_certificate(root / "ca", root / "server", hosts)
        return cls(root, server_state)

    def site_keys(self, name: str, folder: Path) -> SiteKeys:
        """A new key pair for site `name` in `folder` (as `consortia certs site`)."""
        files = create_site_key(folder, name)
        return SiteKeys(name, files.private_key, files.public_key)

    def connection(self, superlink: str, flwr_home: Path) -> SuperLinkConnection:
        """The coordinator's TLS connection to the SuperLink's Control API."""
        return SuperLinkConnection.of(superlink, flwr_home, self.ca_certificate)

    def register(self, keys: SiteKeys, superlink: str) -> None:
        """Register a site's public key with the running server."""
        register_site(
            SiteRegistry(self.security.registry_dir),
            self.connection(superlink, self.server_state / "flwr-admin"),
            keys.public_key,
            keys.name,
        )

    @staticmethod
    def approve(site: SiteSettings, settings: RunSettings, by: str | None = None) -> None:
        """The site's approval of the run (as `consortia node approve`)."""
        ApprovalStore.for_site(site).approve(settings, by=by or getpass.getuser())
