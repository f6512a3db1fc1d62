"""A site's key pair: the identity of a hospital's node towards the server.

Flower's SuperNode authentication (`flower-supernode --auth-supernode-private-key`) loads
the private key with `load_ssh_private_key(data, None)` and needs an unencrypted EC key in
OpenSSH format; `flwr supernode register` and our site registry load the public key in
OpenSSH format. So a site key is an ECDSA P-384 key pair, written as

- `<name>.key`: the private key, OpenSSH private format (`-----BEGIN OPENSSH PRIVATE KEY`),
  unencrypted (Flower cannot prompt for a passphrase), mode 0600; it never leaves the site;
- `<name>.pub`: one line `ecdsa-sha2-nistp384 AAAA... consortia-site:<name>`, mode 0644;
  the coordinator registers it (`consortia site register <name>.pub`).

The same key signs every model update the site returns (`consortia.common.crypto.signing`).
Key fingerprints are written like `ssh-keygen -l`: "SHA256:" and the unpadded base64 of
the SHA-256 of the SSH public key blob, so a coordinator and a hospital can compare them
on the phone with the output of either tool.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from consortia.common.crypto.pki_files import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    PKIError,
    check_name,
    read_key_file,
    write_files,
)

__all__ = [
    "SITE_KEY_COMMENT_PREFIX",
    "SiteKeyFiles",
    "create_site_key",
    "load_site_private_key",
    "load_site_public_key",
    "public_key_comment",
    "public_key_fingerprint",
]

SITE_KEY_COMMENT_PREFIX = "consortia-site:"

_OPENSSH_PRIVATE = b"-----BEGIN OPENSSH PRIVATE KEY-----"


@dataclass(frozen=True)
class SiteKeyFiles:
    """The files written by `create_site_key`."""

    private_key: Path
    public_key: Path
    fingerprint: str


def _kind(key: object) -> str:
    name = type(key).__name__.removeprefix("_")
    for prefix, kind in (("RSA", "an RSA"), ("Ed25519", "an Ed25519"), ("Ed448", "an Ed448")):
        if name.startswith(prefix):
            return kind
    if name.startswith("DSA"):
        return "a DSA"
    return f"a {name}"


def _not_ec(key: object, path: object, what: str) -> PKIError:
    return PKIError(
        f"{path}: {what} is {_kind(key)} key; Flower's SuperNode authentication needs "
        "an ECDSA key (create one with `consortia certs site NAME`)"
    )


def create_site_key(out_dir: Path, name: str, *, force: bool = False) -> SiteKeyFiles:
    """Write `<name>.key` (0600) and `<name>.pub` (0644) for site `name` into `out_dir`."""
    check_name(name)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public_line = public + f" {SITE_KEY_COMMENT_PREFIX}{name}\n".encode("ascii")
    files = SiteKeyFiles(
        private_key=out_dir / f"{name}.key",
        public_key=out_dir / f"{name}.pub",
        fingerprint=public_key_fingerprint(key.public_key()),
    )
    write_files(
        [(files.private_key, private, PRIVATE_MODE), (files.public_key, public_line, PUBLIC_MODE)],
        force=force,
    )
    return files


def load_site_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The site's private key, loaded as Flower's SuperNode loads it (OpenSSH, no
    passphrase, EC)."""
    data = read_key_file(path, "site private key", private=True)
    if _OPENSSH_PRIVATE not in data:
        hint = " (a PEM key: Flower needs OpenSSH format)" if b"-----BEGIN" in data else ""
        raise PKIError(
            f"{path}: not an OpenSSH private key{hint}; create a site key with "
            "`consortia certs site NAME`"
        )
    try:
        key = serialization.load_ssh_private_key(data, None)
    except TypeError:
        raise PKIError(
            f"{path}: the site key is protected by a passphrase, which Flower's SuperNode "
            "cannot give; use an unencrypted key file readable only by the node's user"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise PKIError(f"{path}: cannot load the site private key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise _not_ec(key, path, "the site private key")
    return key


def load_site_public_key(source: Path | bytes) -> ec.EllipticCurvePublicKey:
    """A site's public key from an OpenSSH public key file or its bytes."""
    label: object = source if isinstance(source, Path) else "public key"
    data = read_key_file(source, "site public key") if isinstance(source, Path) else source
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm) as err:
        raise PKIError(
            f"{label}: not an OpenSSH public key ({err}); expected one line like "
            "'ecdsa-sha2-nistp384 AAAA... consortia-site:NAME' (the .pub file of "
            "`consortia certs site NAME`)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise _not_ec(key, label, "the site public key")
    return key


def public_key_comment(source: Path | bytes) -> str:
    """The comment after the key in an OpenSSH public key line ("" when there is none)."""
    data = read_key_file(source, "site public key") if isinstance(source, Path) else source
    parts = data.decode("utf-8", "replace").strip().split(None, 2)
    return parts[2].strip() if len(parts) == 3 else ""


def public_key_fingerprint(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """`SHA256:<base64>` of the SSH public key blob, exactly as `ssh-keygen -l` prints it."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).rstrip(b"=")
    return "SHA256:" + digest.decode("ascii")
