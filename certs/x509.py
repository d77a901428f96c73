"""The federation's X.509 certificates: a private CA and TLS server certificates it signs.

The SuperLink serves HTTPS with ``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile`` and the
SuperNodes verify it with ``--root-certificates ca.crt`` (server-only TLS, no mTLS in Flower
1.42), so the server certificate needs every name the nodes dial in its SubjectAlternativeName:
clients check the name they dial against the SANs, never against the CN. Both certificates pass
OpenSSL's ``VERIFY_X509_STRICT`` and cryptography's WebPKI verifier (see the tests).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.checks import load_ca, now
from certs.errors import CertError
from certs.files import private_dir, write_private, write_public
from certs.keys import new_key, pem_private_bytes
from certs.names import HOST_RULE, is_host_name

_HASH = hashes.SHA384
CA_NAME = "ca"  # files ca.crt / ca.key
SERVER_NAME = "superlink"  # files superlink.crt / superlink.key, and the certificate's CN
CA_DAYS = 3650
SERVER_DAYS = 825
# Backdate notBefore a little so nodes with a slightly slow clock accept a fresh certificate.
CLOCK_SKEW = dt.timedelta(minutes=5)


# --------------------------------------------------------------------------- SANs


def parse_san(value: str) -> x509.GeneralName:
    """One SAN entry: an IP address if it parses as one, else a DNS name (validated)."""
    text = value.strip()
    if not text:
        raise CertError("empty SAN entry")
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not is_host_name(text, wildcard=True):
        raise CertError(
            f"SAN {value!r} is neither an IP address nor a valid DNS name "
            f"({HOST_RULE}; optional leading '*.')"
        )
    return x509.DNSName(text.lower())


def san_key(name: x509.GeneralName) -> str:
    """Canonical text of a SAN, for set comparisons (DNS case-insensitive, IPs normalised)."""
    if isinstance(name, x509.IPAddress):
        return str(name.value)
    return str(name.value).lower().rstrip(".")


def cert_sans(cert: x509.Certificate) -> list[str]:
    """The DNS and IP SANs of ``cert`` in canonical text form ([] if it has none)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [san_key(n) for n in ext if isinstance(n, x509.DNSName | x509.IPAddress)]


def missing_sans(cert: x509.Certificate, names: Iterable[str]) -> list[str]:
    """The entries of ``names`` (canonicalised) that ``cert``'s SANs do not cover."""
    have = set(cert_sans(cert))
    return [k for k in dict.fromkeys(san_key(parse_san(n)) for n in names) if k not in have]


# --------------------------------------------------------------------------- builders


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zk0"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _check_days(days: int) -> None:
    if days < 1:
        raise CertError(f"certificate validity must be at least 1 day, got {days}")


def _key_usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certs,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


def build_ca(
    common_name: str = "zk0 CA", days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An EC P-384 CA key and its self-signed certificate, in memory (nothing written)."""
    _check_days(days)
    key = new_key()
    start = now()
    subject = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign_certs=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _HASH())
    )
    return key, cert


def build_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: Sequence[str],
    name: str,
    days: int = SERVER_DAYS,
    *,
    not_before: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An EC P-384 key and a serverAuth certificate signed by ``ca_key``, in memory.

    Every entry of ``sans`` becomes a SubjectAlternativeName (IP if it parses as one, else DNS).
    """
    _check_days(days)
    names = [parse_san(s) for s in sans]
    if not names:
        raise CertError("the server certificate needs at least one SAN (e.g. localhost)")
    unique: dict[str, x509.GeneralName] = {}
    for n in names:
        unique.setdefault(san_key(n), n)
    key = new_key()
    start = not_before if not_before is not None else now() - CLOCK_SKEW
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(unique.values())), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, _HASH())
    )
    return key, cert


# --------------------------------------------------------------------------- files


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_key_and_cert(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, key_path: Path, cert_path: Path
) -> tuple[Path, Path]:
    """Write a private key (0600) and its certificate (0644), each atomically. (cert, key)."""
    write_private(key_path, pem_private_bytes(key))
    write_public(cert_path, cert_pem(cert))
    return cert_path, key_path


def make_ca(
    out_dir: Path | str, common_name: str = "zk0 CA", days: int = CA_DAYS, name: str = CA_NAME
) -> tuple[Path, Path]:
    """Create a CA key and self-signed cert as ``<name>.key``/``<name>.crt`` in ``out_dir``.

    Overwrites existing files (``ensure_federation_certs`` keeps them). Returns (cert, key).
    """
    key, cert = build_ca(common_name, days)
    out = private_dir(out_dir)
    return write_key_and_cert(key, cert, out / f"{name}.key", out / f"{name}.crt")


def make_server_cert(
    out_dir: Path | str,
    ca_cert_path: Path | str,
    ca_key_path: Path | str,
    sans: Sequence[str],
    name: str = SERVER_NAME,
    days: int = SERVER_DAYS,
    *,
    not_before: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Create ``<name>.key``/``<name>.crt`` in ``out_dir``: a server cert signed by the CA.

    ``not_before`` (default: now minus a small clock-skew allowance) exists so tests can build
    expired certs. Returns (cert, key).
    """
    ca_key, ca_cert = load_ca(ca_cert_path, ca_key_path)
    key, cert = build_server_cert(ca_key, ca_cert, sans, name, days, not_before=not_before)
    out = private_dir(out_dir)
    return write_key_and_cert(key, cert, out / f"{name}.key", out / f"{name}.crt")
