"""The consortium's certificate authority and the server's TLS certificate.

Files (all PEM):

- CA folder (`consortia certs init`): `ca.key`, the CA's ECDSA P-384 private key (PKCS#8,
  mode 0600, optionally encrypted with a passphrase) and `ca.pem`, its self-signed
  certificate (CA, path length 0, may sign certificates and CRLs). `ca.key` is needed only
  to issue certificates: keep it on a machine that is offline or at least not the server,
  with a passphrase. `ca.pem` is public; every site gets a copy
  (`flower-supernode --root-certificates ca.pem`).
- Server folder (`consortia certs server`): `server.key` (P-384, PKCS#8, unencrypted,
  0600), `server.pem` (names the server's DNS names and IP addresses, serverAuth) and a
  copy of `ca.pem`: exactly what `flower-superlink --ssl-keyfile --ssl-certfile
  --ssl-ca-certfile` takes. The server key also signs the run's provenance files.

Site key pairs (OpenSSH format, for Flower's SuperNode authentication) live in
`consortia.common.crypto.site_keys`, loading and checking certificates in
`consortia.common.crypto.certificates`; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consortia.common.crypto.certificates import (
    check_is_ca,
    key_matches_certificate,
    load_certificate,
    load_server_key,
    parse_host,
    verify_certificate_chain,
)
from consortia.common.crypto.pki_files import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    PKIError,
    read_key_file,
    write_files,
)
from consortia.common.crypto.site_keys import (
    SiteKeyFiles,
    create_site_key,
    load_site_private_key,
    load_site_public_key,
    public_key_fingerprint,
)

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "CAFiles",
    "PKIError",
    "ServerFiles",
    "SiteKeyFiles",
    "ca_key_is_encrypted",
    "create_ca",
    "create_site_key",
    "issue_server_certificate",
    "key_matches_certificate",
    "load_certificate",
    "load_server_key",
    "load_site_private_key",
    "load_site_public_key",
    "public_key_fingerprint",
    "verify_certificate_chain",
]

CA_KEY = "ca.key"
CA_CERT = "ca.pem"
SERVER_KEY = "server.key"
SERVER_CERT = "server.pem"

_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class CAFiles:
    """The files written by `create_ca`."""

    key: Path
    certificate: Path


@dataclass(frozen=True)
class ServerFiles:
    """The files written by `issue_server_certificate`."""

    key: Path
    certificate: Path
    ca_certificate: Path


def _now() -> datetime:
    return datetime.now(UTC)


def _check_days(days: int) -> None:
    if days < 1:
        raise PKIError(f"a certificate must be valid for at least 1 day (got days={days})")


def _encryption(passphrase: bytes | None) -> serialization.KeySerializationEncryption:
    if passphrase is None:
        return serialization.NoEncryption()
    if not passphrase:
        raise PKIError("the CA key passphrase is empty; give one or none")
    return serialization.BestAvailableEncryption(passphrase)


def _pem_key(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(passphrase)
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def create_ca(
    directory: Path,
    *,
    name: str = "Consortia CA",
    days: int = 3650,
    passphrase: bytes | None = None,
    force: bool = False,
) -> CAFiles:
    """Create the consortium CA: `ca.key` (0600, encrypted when `passphrase` is given) and
    the self-signed `ca.pem` (0644) in `directory` (created 0700 when new)."""
    _check_days(days)
    if not 1 <= len(name) <= 64:
        raise PKIError(f"the CA name must have 1 to 64 characters (got {len(name)})")
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = _now() - _CLOCK_SKEW
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA384())
    )
    files = CAFiles(key=directory / CA_KEY, certificate=directory / CA_CERT)
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
    write_files(
        [
            (files.key, _pem_key(key, passphrase), PRIVATE_MODE),
            (files.certificate, _pem_cert(cert), PUBLIC_MODE),
        ],
        force=force,
    )
    return files


def ca_key_is_encrypted(ca_dir: Path) -> bool:
    """Whether `ca_dir/ca.key` needs a passphrase (PKIError when there is no CA there)."""
    data = read_key_file(_ca_key_path(ca_dir), "CA private key", private=True)
    return b"ENCRYPTED PRIVATE KEY" in data


def _ca_key_path(ca_dir: Path) -> Path:
    path = ca_dir / CA_KEY
    if not path.exists():
        raise PKIError(
            f"{ca_dir}: no {CA_KEY} here; give the CA folder written by `consortia certs init`"
        )
    return path


def _load_ca(
    ca_dir: Path, passphrase: bytes | None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = load_server_key(_ca_key_path(ca_dir), passphrase)
    cert = load_certificate(ca_dir / CA_CERT)
    if not key_matches_certificate(key, cert):
        raise PKIError(f"{ca_dir}: {CA_KEY} is not the key of {CA_CERT} (files from two CAs?)")
    check_is_ca(cert, ca_dir / CA_CERT)
    now = _now()
    if now > cert.not_valid_after_utc:
        raise PKIError(f"{ca_dir / CA_CERT}: the CA expired on {cert.not_valid_after_utc:%F}")
    return key, cert


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        name = parse_host(host)
        if name not in names:
            names.append(name)
    if not names:
        raise PKIError("give at least one host name or IP address for the server certificate")
    return names


def issue_server_certificate(
    ca_dir: Path,
    out_dir: Path,
    hosts: Sequence[str],
    *,
    days: int = 825,
    ca_passphrase: bytes | None = None,
    valid_from: datetime | None = None,
    force: bool = False,
) -> ServerFiles:
    """Issue the server's TLS certificate for `hosts` (DNS names and IP addresses) with
    the CA in `ca_dir`; write `server.key` (0600), `server.pem` and `ca.pem` to `out_dir`.
    The certificate's validity ends with the CA's at the latest. `valid_from` (default:
    now minus 5 minutes for clock skew) exists for tests and planned roll-overs."""
    _check_days(days)
    names = _host_names(hosts)
    ca_key, ca_cert = _load_ca(ca_dir, ca_passphrase)
    key = ec.generate_private_key(ec.SECP384R1())
    start = valid_from.astimezone(UTC) if valid_from else _now() - _CLOCK_SKEW
    end = min(start + timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = _server_certificate(key.public_key(), names, (ca_key, ca_cert), start, end)
    files = ServerFiles(
        key=out_dir / SERVER_KEY,
        certificate=out_dir / SERVER_CERT,
        ca_certificate=out_dir / CA_CERT,
    )
    writes = [
        (files.key, _pem_key(key), PRIVATE_MODE),
        (files.certificate, _pem_cert(cert), PUBLIC_MODE),
    ]
    ca_pem = _pem_cert(ca_cert)
    copy_exists = files.ca_certificate.exists()
    if copy_exists and files.ca_certificate.read_bytes().strip() != ca_pem.strip() and not force:
        raise PKIError(
            f"{files.ca_certificate} already exists and is another CA's certificate; "
            "refusing to overwrite (use another --out folder, or --force)"
        )
    if not copy_exists or force:
        writes.append((files.ca_certificate, ca_pem, PUBLIC_MODE))
    write_files(writes, force=force)
    return files


def _server_certificate(
    public: ec.EllipticCurvePublicKey,
    names: list[x509.GeneralName],
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    start: datetime,
    end: datetime,
) -> x509.Certificate:
    """The server's certificate for `public`, naming `names` (the first one is also its
    common name), valid from `start` to `end`, signed by the CA."""
    ca_key, ca_cert = ca
    common_name = str(names[0].value)[:64]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
