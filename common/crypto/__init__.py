"""Keys, certificates and signatures: the consortium CA, TLS files, site keys and signed replies.

The modules, one concept each:

- ``certificates``: Loading and checking PEM certificates and EC keys: the consortium CA's, the
  server's.
- ``hash_chain``: Hash chains over JSON records: each record carries the SHA-256 of its
  predecessor's hash and of its own canonical JSON, so that editing, dropping or reordering any
  record breaks every hash after it.
- ``pki``: The consortium's certificate authority and the server's TLS certificate.
- ``pki_files``: Key and certificate files on disk: private files created owner-only from the
  first byte, nothing replaced unless asked, clear errors for unreadable files.
- ``signing``: Signed model updates: every reply a site sends (query, train, evaluate) carries
  an ECDSA signature that the server checks against the site's registered public key.
- ``site_keys``: A site's key pair: the identity of a hospital's node towards the server.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.common.crypto.certificates import (
        check_is_ca as check_is_ca,
    )
    from consortia.common.crypto.certificates import (
        key_matches_certificate as key_matches_certificate,
    )
    from consortia.common.crypto.certificates import (
        load_certificate as load_certificate,
    )
    from consortia.common.crypto.certificates import (
        load_server_key as load_server_key,
    )
    from consortia.common.crypto.certificates import (
        parse_host as parse_host,
    )
    from consortia.common.crypto.certificates import (
        verify_certificate_chain as verify_certificate_chain,
    )
    from consortia.common.crypto.hash_chain import (
        GENESIS as GENESIS,
    )
    from consortia.common.crypto.hash_chain import (
        HASH_FIELD as HASH_FIELD,
    )
    from consortia.common.crypto.hash_chain import (
        PREV_FIELD as PREV_FIELD,
    )
    from consortia.common.crypto.hash_chain import (
        chain_hash as chain_hash,
    )
    from consortia.common.crypto.hash_chain import (
        genesis_for as genesis_for,
    )
    from consortia.common.crypto.hash_chain import (
        verify_chain as verify_chain,
    )
    from consortia.common.crypto.pki import (
        CA_CERT as CA_CERT,
    )
    from consortia.common.crypto.pki import (
        CA_KEY as CA_KEY,
    )
    from consortia.common.crypto.pki import (
        SERVER_CERT as SERVER_CERT,
    )
    from consortia.common.crypto.pki import (
        SERVER_KEY as SERVER_KEY,
    )
    from consortia.common.crypto.pki import (
        CAFiles as CAFiles,
    )
    from consortia.common.crypto.pki import (
        PKIError as PKIError,
    )
    from consortia.common.crypto.pki import (
        ServerFiles as ServerFiles,
    )
    from consortia.common.crypto.pki import (
        SiteKeyFiles as SiteKeyFiles,
    )
    from consortia.common.crypto.pki import (
        ca_key_is_encrypted as ca_key_is_encrypted,
    )
    from consortia.common.crypto.pki import (
        create_ca as create_ca,
    )
    from consortia.common.crypto.pki import (
        create_site_key as create_site_key,
    )
    from consortia.common.crypto.pki import (
        issue_server_certificate as issue_server_certificate,
    )
    from consortia.common.crypto.pki import (
        load_site_private_key as load_site_private_key,
    )
    from consortia.common.crypto.pki import (
        load_site_public_key as load_site_public_key,
    )
    from consortia.common.crypto.pki import (
        public_key_fingerprint as public_key_fingerprint,
    )
    from consortia.common.crypto.pki_files import (
        PRIVATE_MODE as PRIVATE_MODE,
    )
    from consortia.common.crypto.pki_files import (
        PUBLIC_MODE as PUBLIC_MODE,
    )
    from consortia.common.crypto.pki_files import (
        check_name as check_name,
    )
    from consortia.common.crypto.pki_files import (
        check_targets as check_targets,
    )
    from consortia.common.crypto.pki_files import (
        read_key_file as read_key_file,
    )
    from consortia.common.crypto.pki_files import (
        write_files as write_files,
    )
    from consortia.common.crypto.signing import (
        KINDS as KINDS,
    )
    from consortia.common.crypto.signing import (
        UPDATE_DOMAIN as UPDATE_DOMAIN,
    )
    from consortia.common.crypto.signing import (
        ReplayGuard as ReplayGuard,
    )
    from consortia.common.crypto.signing import (
        SignatureError as SignatureError,
    )
    from consortia.common.crypto.signing import (
        SignedFields as SignedFields,
    )
    from consortia.common.crypto.signing import (
        content_digest as content_digest,
    )
    from consortia.common.crypto.signing import (
        new_nonce as new_nonce,
    )
    from consortia.common.crypto.signing import (
        sign as sign,
    )
    from consortia.common.crypto.signing import (
        verify as verify,
    )
    from consortia.common.crypto.site_keys import (
        SITE_KEY_COMMENT_PREFIX as SITE_KEY_COMMENT_PREFIX,
    )
    from consortia.common.crypto.site_keys import (
        public_key_comment as public_key_comment,
    )

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "GENESIS",
    "HASH_FIELD",
    "KINDS",
    "PREV_FIELD",
    "PRIVATE_MODE",
    "PUBLIC_MODE",
    "SERVER_CERT",
    "SERVER_KEY",
    "SITE_KEY_COMMENT_PREFIX",
    "UPDATE_DOMAIN",
    "CAFiles",
    "PKIError",
    "ReplayGuard",
    "ServerFiles",
    "SignatureError",
    "SignedFields",
    "SiteKeyFiles",
    "ca_key_is_encrypted",
    "chain_hash",
    "check_is_ca",
    "check_name",
    "check_targets",
    "content_digest",
    "create_ca",
    "create_site_key",
    "genesis_for",
    "issue_server_certificate",
    "key_matches_certificate",
    "load_certificate",
    "load_server_key",
    "load_site_private_key",
    "load_site_public_key",
    "new_nonce",
    "parse_host",
    "public_key_comment",
    "public_key_fingerprint",
    "read_key_file",
    "sign",
    "verify",
    "verify_certificate_chain",
    "verify_chain",
    "write_files",
]

_EXPORTS = {
    "CAFiles": "pki",
    "CA_CERT": "pki",
    "CA_KEY": "pki",
    "GENESIS": "hash_chain",
    "HASH_FIELD": "hash_chain",
    "KINDS": "signing",
    "PKIError": "pki",
    "PREV_FIELD": "hash_chain",
    "PRIVATE_MODE": "pki_files",
    "PUBLIC_MODE": "pki_files",
    "ReplayGuard": "signing",
    "SERVER_CERT": "pki",
    "SERVER_KEY": "pki",
    "SITE_KEY_COMMENT_PREFIX": "site_keys",
    "ServerFiles": "pki",
    "SignatureError": "signing",
    "SignedFields": "signing",
    "SiteKeyFiles": "pki",
    "UPDATE_DOMAIN": "signing",
    "ca_key_is_encrypted": "pki",
    "chain_hash": "hash_chain",
    "check_is_ca": "certificates",
    "check_name": "pki_files",
    "check_targets": "pki_files",
    "content_digest": "signing",
    "create_ca": "pki",
    "create_site_key": "pki",
    "genesis_for": "hash_chain",
    "issue_server_certificate": "pki",
    "key_matches_certificate": "certificates",
    "load_certificate": "certificates",
    "load_server_key": "certificates",
    "load_site_private_key": "pki",
    "load_site_public_key": "pki",
    "new_nonce": "signing",
    "parse_host": "certificates",
    "public_key_comment": "site_keys",
    "public_key_fingerprint": "pki",
    "read_key_file": "pki_files",
    "sign": "signing",
    "verify": "signing",
    "verify_certificate_chain": "certificates",
    "verify_chain": "hash_chain",
    "write_files": "pki_files",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
