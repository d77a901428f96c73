"""Checks that a CA, the SuperLink's certificate and a site key are what Flower will accept.

Each one raises :class:`CertError` naming the file at fault, before any process starts: the same
mistakes otherwise surface as an opaque TLS handshake failure on every SuperNode, or as a
SuperNode exiting with code 305.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from certs.errors import CertError
from certs.files import load_cert
from certs.keys import NIST_CURVES, load_ec_key, load_pem_key, same_public_key


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_validity(cert: x509.Certificate, path: Path, what: str) -> None:
    """Refuse a certificate that is expired or not yet valid (a wrong clock is named)."""
    moment = now()
    if moment < cert.not_valid_before_utc:
        raise CertError(
            f"{what} {path}: not yet valid (valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
            " UTC; check the clock)"
        )
    if moment > cert.not_valid_after_utc:
        raise CertError(f"{what} {path}: expired on {cert.not_valid_after_utc:%Y-%m-%d} UTC")


def check_ca(path: Path | str) -> x509.Certificate:
    """Load and check a CA certificate: a CA (BasicConstraints ca=True), self-signed, in date.

    Raises :class:`CertError` naming ``path`` otherwise.
    """
    path = Path(path)
    cert = load_cert(path, "CA certificate")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CertError(f"CA certificate {path}: not a CA (BasicConstraints ca=True missing)")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(f"CA certificate {path}: not a valid self-signed certificate") from None
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise CertError(f"CA certificate {path}: SubjectKeyIdentifier missing") from None
    check_validity(cert, path, "CA certificate")
    return cert


def load_ca(
    cert_path: Path | str, key_path: Path | str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA's key and certificate, checked (:func:`check_ca`) and checked to be one pair."""
    cert = check_ca(cert_path)
    key = load_pem_key(Path(key_path), "CA key")
    if not same_public_key(key.public_key(), cert.public_key()):
        raise CertError(f"CA key {key_path} does not match CA certificate {cert_path}")
    return key, cert


def verify_server_cert(
    ca_cert: Path | str, server_cert: Path | str, server_key: Path | str
) -> x509.Certificate:
    """Check that the SuperLink's cert is signed by the CA, matches its key and is in date.

    Catches the mistakes that otherwise surface as an opaque TLS handshake failure on every
    SuperNode. Raises :class:`CertError` naming the file(s) at fault; returns the server cert.
    """
    ca_path, cert_path, key_path = Path(ca_cert), Path(server_cert), Path(server_key)
    ca = check_ca(ca_path)
    cert = load_cert(cert_path, "server certificate")
    key = load_pem_key(key_path, "server key")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(
            f"server certificate {cert_path} is not signed by CA certificate {ca_path}"
        ) from None
    if not same_public_key(key.public_key(), cert.public_key()):
        raise CertError(f"server key {key_path} does not match server certificate {cert_path}")
    check_validity(cert, cert_path, "server certificate")
    return cert


def check_site_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """Load a SuperNode key the way Flower does; raise :class:`CertError` if Flower would refuse.

    Expected: an unencrypted OpenSSH private key, EC on a NIST curve (P-256/P-384/P-521).
    """
    path = Path(path)
    expected = "expected an unencrypted OpenSSH EC private key on a NIST curve (e.g. P-384)"
    key = load_ec_key(path, "site key", "OpenSSH", expected)
    if not isinstance(key.curve, NIST_CURVES):
        raise CertError(f"site key {path}: curve {key.curve.name}; {expected}")
    return key
