"""Test keys and certificates in the formats Consortia uses: a consortium CA (EC P-384),
a server certificate it issued, and site key pairs (EC P-384, OpenSSH format)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Authority", "make_authority", "site_key", "write_site_key"]

NOW = datetime.now(UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Authority:
    """A CA and one server certificate it issued."""

    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    server_key: ec.EllipticCurvePrivateKey
    server_cert: x509.Certificate

    @property
    def server_cert_pem(self) -> bytes:
        return self.server_cert.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        return path


def make_authority(
    ca_name: str = "Consortia test CA",
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    curve: ec.EllipticCurve | None = None,
) -> Authority:
    """A self-signed CA and a server certificate (validity: a day ago to a year on)."""
    ca_key = ec.generate_private_key(ec.SECP384R1())
    start = NOW - timedelta(days=1)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(curve or ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("consortia-server"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or start)
        .not_valid_after(not_after or NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    return Authority(ca_key, ca_cert, server_key, server_cert)


def site_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def write_site_key(key: ec.EllipticCurvePrivateKey, folder: Path, name: str) -> tuple[Path, Path]:
    """`<name>.key` (OpenSSH private key) and `<name>.pub` (OpenSSH public key)."""
    private = folder / f"{name}.key"
    public = folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public
