"""The coordinator's register of sites (one public key per site name).

The modules, one concept each:

- ``cli``: `consortia site register|list|unregister`: the coordinator's register of sites.
- ``server_security``: The coordinator's security material: TLS files and the registry of site
  keys.
- ``site_admin``: Registering a site with the coordinator: its public key goes into our site
  registry (which the ServerApp uses to check signatures) and into the SuperLink (Flower's
  SuperNode authentication, through its Control API), which answers with the site's node id.
- ``site_registry``: The sites the coordinator knows by key: one OpenSSH public key per site
  name.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.registry.server_security import (
        CA_FILE as CA_FILE,
    )
    from consortia.server.registry.server_security import (
        CERTS_DIR_ENV as CERTS_DIR_ENV,
    )
    from consortia.server.registry.server_security import (
        DEFAULT_SERVER_CERTS as DEFAULT_SERVER_CERTS,
    )
    from consortia.server.registry.server_security import (
        REGISTRY_DIR_ENV as REGISTRY_DIR_ENV,
    )
    from consortia.server.registry.server_security import (
        SERVER_CERT_FILE as SERVER_CERT_FILE,
    )
    from consortia.server.registry.server_security import (
        SERVER_KEY_FILE as SERVER_KEY_FILE,
    )
    from consortia.server.registry.server_security import (
        ServerSecurity as ServerSecurity,
    )
    from consortia.server.registry.server_security import (
        registry_dir as registry_dir,
    )
    from consortia.server.registry.site_admin import (
        register_site as register_site,
    )
    from consortia.server.registry.site_admin import (
        unregister_site as unregister_site,
    )
    from consortia.server.registry.site_registry import (
        REGISTRY_FILE as REGISTRY_FILE,
    )
    from consortia.server.registry.site_registry import (
        RegisteredSite as RegisteredSite,
    )
    from consortia.server.registry.site_registry import (
        SiteRegistry as SiteRegistry,
    )
    from consortia.server.registry.site_registry import (
        SiteRegistryError as SiteRegistryError,
    )
    from consortia.server.registry.site_registry import (
        UnknownSiteError as UnknownSiteError,
    )
    from consortia.server.registry.site_registry import (
        site_name_from_public_key as site_name_from_public_key,
    )

__all__ = [
    "CA_FILE",
    "CERTS_DIR_ENV",
    "DEFAULT_SERVER_CERTS",
    "REGISTRY_DIR_ENV",
    "REGISTRY_FILE",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "RegisteredSite",
    "ServerSecurity",
    "SiteRegistry",
    "SiteRegistryError",
    "UnknownSiteError",
    "register_site",
    "registry_dir",
    "site_name_from_public_key",
    "unregister_site",
]

_EXPORTS = {
    "CA_FILE": "server_security",
    "CERTS_DIR_ENV": "server_security",
    "DEFAULT_SERVER_CERTS": "server_security",
    "REGISTRY_DIR_ENV": "server_security",
    "REGISTRY_FILE": "site_registry",
    "RegisteredSite": "site_registry",
    "SERVER_CERT_FILE": "server_security",
    "SERVER_KEY_FILE": "server_security",
    "ServerSecurity": "server_security",
    "SiteRegistry": "site_registry",
    "SiteRegistryError": "site_registry",
    "UnknownSiteError": "site_registry",
    "register_site": "site_admin",
    "registry_dir": "server_security",
    "site_name_from_public_key": "site_registry",
    "unregister_site": "site_admin",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
