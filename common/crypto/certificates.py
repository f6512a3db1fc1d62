"""Loading and checking PEM certificates and EC keys: the consortium CA's, the server's.

`verify_certificate_chain` gives the reason a certificate is refused (another issuer, a
bad signature, expired, not yet valid, another host), then, for a host, also runs the
checks a TLS client makes (cryptography's RFC 5280 web-PKI verifier).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from consortia.common.crypto.pki_files import PKIError, read_key_file

__all__ = [
    "check_is_ca",
    "key_matches_certificate",
    "load_certificate",
    "load_server_key",
    "parse_host",
    "verify_certificate_chain",
]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM certificate, or PKIError naming the file."""
    data = read_key_file(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise PKIError(f"{path}: not a PEM certificate ({err})") from None


def load_server_key(path: Path, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """An EC private key in PEM (the server's TLS key, which also signs provenance files,
    or the CA key), or PKIError naming the file and the problem."""
    data = read_key_file(path, "private key", private=True)
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError:
        if passphrase is None:
            raise PKIError(f"{path}: the key is encrypted; give its passphrase") from None
        raise PKIError(f"{path}: the key is not encrypted, but a passphrase was given") from None
    except (ValueError, UnsupportedAlgorithm) as err:
        problem = "wrong passphrase" if passphrase is not None else "not a PEM private key"
        raise PKIError(f"{path}: cannot load the private key: {problem} ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        kind = type(key).__name__.removeprefix("_").removesuffix("PrivateKey") or "unknown"
        raise PKIError(f"{path}: not an EC key ({kind}); Consortia needs an EC (P-384) key")
    return key


def key_matches_certificate(
    key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, cert: x509.Certificate
) -> bool:
    """Whether `key` (or its public half) is the key `cert` certifies."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return public.public_bytes(*raw) == cert.public_key().public_bytes(*raw)


def check_is_ca(cert: x509.Certificate, label: object) -> None:
    """PKIError (starting with `label`) unless `cert` is a CA certificate."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise PKIError(f"{label}: {cert.subject.rfc4514_string()} is not a CA certificate")


def parse_host(host: str) -> x509.DNSName | x509.IPAddress:
    """A server host as a certificate name: an IP address (IPv6 with or without brackets)
    or a lower-case DNS name; PKIError for anything else (a port, a URL)."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if ":" in text or "/" in text:
        raise PKIError(f"invalid host {host!r}: give a DNS name or an IP address, without port")
    if not _HOSTNAME.fullmatch(text):
        raise PKIError(f"invalid host {host!r}: not a DNS name or an IP address")
    return x509.DNSName(text.rstrip(".").lower())


def _certificate_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in san if isinstance(name, x509.DNSName | x509.IPAddress)]


def _check_host(cert: x509.Certificate, host: str) -> None:
    wanted = parse_host(host)
    names = _certificate_names(cert)
    if str(wanted.value).lower() not in {name.lower() for name in names}:
        raise PKIError(
            f"the certificate does not name host {host!r} (it names: {', '.join(names) or '-'})"
            "; issue one with `consortia certs server --host ...`"
        )


def verify_certificate_chain(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    *,
    host: str | None = None,
    at: datetime | None = None,
) -> None:
    """Check that the consortium CA `ca_cert` issued `cert`, that both are valid at `at`
    (default now) and, when `host` is given, that `cert` names it. PKIError says what is
    wrong: another issuer, a bad signature, expired or not yet valid, wrong host."""
    subject = cert.subject.rfc4514_string()
    check_is_ca(ca_cert, "CA certificate")
    if cert.issuer != ca_cert.subject:
        raise PKIError(
            f"certificate {subject!r} was issued by {cert.issuer.rfc4514_string()!r}, "
            f"not by this consortium CA {ca_cert.subject.rfc4514_string()!r}"
        )
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError) as err:
        raise PKIError(
            f"certificate {subject!r}: bad signature, not signed by this CA's key "
            f"(another CA with the same name?) ({err or type(err).__name__})"
        ) from None
    when = (at or datetime.now(UTC)).astimezone(UTC)
    for label, checked in (("the CA certificate", ca_cert), (f"certificate {subject!r}", cert)):
        if when < checked.not_valid_before_utc:
            raise PKIError(
                f"{label} is not yet valid (valid from {checked.not_valid_before_utc:%F %T} "
                "UTC); check the clocks"
            )
        if when > checked.not_valid_after_utc:
            raise PKIError(f"{label} expired on {checked.not_valid_after_utc:%F %T} UTC")
    if host is not None:
        _check_host(cert, host)
        _check_web_pki(cert, ca_cert, host, when)


def _check_web_pki(
    cert: x509.Certificate, ca_cert: x509.Certificate, host: str, when: datetime
) -> None:
    """What a TLS client checks beyond the above (RFC 5280 profile, key usages)."""
    subject = parse_host(host)
    verifier = PolicyBuilder().store(Store([ca_cert])).time(when).build_server_verifier(subject)
    try:
        verifier.verify(cert, [])
    except VerificationError as err:
        raise PKIError(f"a TLS client would refuse the certificate: {err}") from None
