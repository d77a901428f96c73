"""Certificates and keys for a zk0 federation: one private CA, the SuperLink's TLS certificate,
one OpenSSH EC key per SuperNode (node authentication) and the SuperExec shared secret.

Why this shape (Flower 1.42):

* The SuperLink serves HTTPS with ``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile`` and the
  SuperNodes verify it with ``--root-certificates ca.crt`` (server-only TLS, no mTLS). The server
  certificate therefore needs every name the nodes dial in its SubjectAlternativeName.
* SuperNodes authenticate with their own EC key in OpenSSH format on a NIST curve
  (``load_ssh_private_key``; ``flwr supernode register site.pub`` uses ``load_ssh_public_key``);
  Ed25519 and RSA are refused, so P-384 is used throughout.
* The SuperExec secret file is read as exact raw bytes, so it is written as hex text with no
  trailing newline (the same bytes whether passed as a file or copied into an env var).

Private files (CA key, server key, site keys, secret) are written atomically with mode 0600 into a
0700 directory. Nothing here prints or logs key material; only paths and reasons.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("certs/generated")
DEFAULT_SANS: tuple[str, ...] = ("localhost", "127.0.0.1")
DEFAULT_SITES = 4
SERVER_NAME = "superlink"
CA_NAME = "ca"
SECRET_NAME = "superexec.secret"

# A server certificate this close to expiry is reissued by ensure_bundle (the CA is not).
RENEW_BEFORE = dt.timedelta(days=30)
# Backdate notBefore a little so nodes with a slightly slow clock accept a fresh certificate.
CLOCK_SKEW = dt.timedelta(minutes=5)

_CURVE = ec.SECP384R1
_HASH = hashes.SHA384
_NIST_CURVES = (ec.SECP192R1, ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# DNS labels; underscores allowed because compose service names may contain them.
_DNS_RE = re.compile(
    r"^(\*\.)?[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


class CertError(ValueError):
    """A certificate, key or secret file is missing, malformed or does not fit the others."""


@dataclass(frozen=True)
class CertBundle:
    """Paths of everything a federation needs, plus what ensure_bundle did to each file.

    ``site_keys`` maps a site name to ``(private_key, public_key)``; ``actions`` maps each path to
    ``"created"``, ``"kept"`` or ``"regenerated: <why>"`` so callers can report without reading
    any file contents.
    """

    out_dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    superexec_secret: Path
    site_keys: dict[str, tuple[Path, Path]]
    sans: tuple[str, ...] = ()
    actions: dict[Path, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- file writing


def _ensure_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` as 0700 (it holds private keys); an existing dir keeps its mode."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(out_dir, 0o700)  # mkdir's mode is filtered by the umask
    return out_dir


def _write_atomic(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to ``path`` via a same-dir temp file created with ``mode``, then replace.

    The temp file is born with its final mode (no window where a key is world-readable) and
    ``os.replace`` means readers see either the old file or the complete new one, never a torn
    write; a symlink at ``path`` is replaced, not followed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits from ``mode``
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # persist the rename; best effort
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _write_private(path: Path, data: bytes) -> Path:
    return _write_atomic(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> Path:
    return _write_atomic(path, data, 0o644)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Serialise ensure_bundle runs on one dir (e.g. several compose services starting at once)."""
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- helpers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zk0"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8 PEM: accepted by Python's ssl (uvicorn) and by gRPC alike.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_days(days: int) -> None:
    if days < 1:
        raise CertError(f"certificate validity must be at least 1 day, got {days}")


def parse_san(value: str) -> x509.GeneralName:
    """One SAN entry: an IP address if it parses as one, else a DNS name (validated)."""
    text = value.strip()
    if not text:
        raise CertError("empty SAN entry")
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _DNS_RE.match(text) or len(text) > 253:
        raise CertError(
            f"SAN {value!r} is neither an IP address nor a valid DNS name "
            "(letters, digits, '-', '_' and dots; optional leading '*.')"
        )
    return x509.DNSName(text.lower())


def _san_key(name: x509.GeneralName) -> str:
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
    return [_san_key(n) for n in ext if isinstance(n, x509.DNSName | x509.IPAddress)]


def _read(path: Path, what: str) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{what} {path}: file not found") from None
    except OSError as err:
        raise CertError(f"{what} {path}: cannot read ({err.strerror})") from None


def _load_cert(path: Path, what: str) -> x509.Certificate:
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertError(f"{what} {path}: not a PEM X.509 certificate") from None


def _load_ec_key(path: Path, what: str, fmt: str, expected: str) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted EC private key (``fmt``: PEM or OpenSSH), naming the file on error."""
    load = (serialization.load_pem_private_key if fmt == "PEM"
            else serialization.load_ssh_private_key)
    data = _read(path, what)
    try:
        key = load(data, password=None)
    except TypeError:
        raise CertError(f"{what} {path}: passphrase-protected; {expected}") from None
    except (ValueError, UnsupportedAlgorithm):
        article = "an" if fmt[0] in "AEIOU" else "a"
        raise CertError(f"{what} {path}: not {article} {fmt} private key; {expected}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{what} {path}: {type(key).__name__}; {expected}")
    return key


def _load_pem_key(path: Path, what: str) -> ec.EllipticCurvePrivateKey:
    return _load_ec_key(path, what, "PEM", "expected an unencrypted PEM EC private key")


def _check_validity(cert: x509.Certificate, path: Path, what: str) -> None:
    now = _now()
    if now < cert.not_valid_before_utc:
        raise CertError(
            f"{what} {path}: not yet valid (valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
            " UTC; check the clock)"
        )
    if now > cert.not_valid_after_utc:
        raise CertError(f"{what} {path}: expired on {cert.not_valid_after_utc:%Y-%m-%d} UTC")


def _same_public_key(a: ec.EllipticCurvePublicKey, b: object) -> bool:
    return isinstance(b, ec.EllipticCurvePublicKey) and a.public_numbers() == b.public_numbers()


def _ski(key: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


# --------------------------------------------------------------------------- makers


def build_ca(
    common_name: str = "zk0 CA", days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An EC P-384 CA key and its self-signed certificate, in memory (nothing written)."""
    _check_days(days)
    key = ec.generate_private_key(_CURVE())
    now = _now()
    subject = _name(common_name)
    ski = _ski(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
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
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _HASH())
    )
    return key, cert


def make_ca(
    out_dir: Path | str, common_name: str = "zk0 CA", days: int = 3650
) -> tuple[Path, Path]:
    """Create an EC P-384 CA key and self-signed cert as ``ca.key``/``ca.crt`` in ``out_dir``.

    Overwrites existing files (use :func:`ensure_bundle` to keep them). Returns (cert, key).
    """
    key, cert = build_ca(common_name, days)
    out = _ensure_dir(Path(out_dir))
    key_path = _write_private(out / f"{CA_NAME}.key", _pem_key(key))
    cert_path = _write_public(out / f"{CA_NAME}.crt", cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def build_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: Sequence[str],
    name: str = SERVER_NAME,
    days: int = 825,
    *,
    not_before: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An EC P-384 key and a serverAuth certificate signed by ``ca_key``, in memory.

    Every entry of ``sans`` becomes a SubjectAlternativeName (IP if it parses as one, else DNS):
    clients check the name they dial against these, never against the CN.
    """
    _check_days(days)
    names = [parse_san(s) for s in sans]
    if not names:
        raise CertError("the server certificate needs at least one SAN (e.g. localhost)")
    unique: dict[str, x509.GeneralName] = {}
    for n in names:
        unique.setdefault(_san_key(n), n)
    key = ec.generate_private_key(_CURVE())
    start = not_before if not_before is not None else _now() - CLOCK_SKEW
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
        .add_extension(x509.SubjectAlternativeName(list(unique.values())), critical=False)
        .add_extension(_ski(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, _HASH())
    )
    return key, cert


def write_key_and_cert(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, key_path: Path, cert_path: Path
) -> tuple[Path, Path]:
    """Write a private key (0600) and its certificate (0644), each atomically. (cert, key)."""
    _write_private(key_path, _pem_key(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def make_server_cert(
    out_dir: Path | str,
    ca_cert_path: Path | str,
    ca_key_path: Path | str,
    sans: Sequence[str],
    name: str = SERVER_NAME,
    days: int = 825,
    *,
    not_before: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Create ``<name>.key``/``<name>.crt`` in ``out_dir``: a server cert signed by the CA.

    ``not_before`` (default: now minus a small clock-skew allowance) exists so tests can build
    expired certs. Returns (cert, key).
    """
    ca_cert = check_ca(ca_cert_path)
    ca_key = _load_pem_key(Path(ca_key_path), "CA key")
    if not _same_public_key(ca_key.public_key(), ca_cert.public_key()):
        raise CertError(f"CA key {ca_key_path} does not match CA certificate {ca_cert_path}")
    key, cert = build_server_cert(ca_key, ca_cert, sans, name, days, not_before=not_before)
    out = _ensure_dir(Path(out_dir))
    return write_key_and_cert(key, cert, out / f"{name}.key", out / f"{name}.crt")


def _check_site_name(site_name: str) -> None:
    if not _SITE_RE.match(site_name):
        raise CertError(
            f"site name {site_name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _ssh_public(key: ec.EllipticCurvePublicKey, site_name: str) -> bytes:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + f" zk0-{site_name}\n".encode()


def make_site_key(out_dir: Path | str, site_name: str) -> tuple[Path, Path]:
    """Create a SuperNode's P-384 key: ``<site>.key`` (OpenSSH private, no passphrase, 0600)
    and ``<site>.pub`` (OpenSSH public line, for ``flwr supernode register``).

    Overwrites existing files: a new key must be registered with the SuperLink again.
    Returns (private, public).
    """
    _check_site_name(site_name)
    out = _ensure_dir(Path(out_dir))
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    priv_path = _write_private(out / f"{site_name}.key", private)
    pub_path = _write_public(out / f"{site_name}.pub", _ssh_public(key.public_key(), site_name))
    return priv_path, pub_path


def make_secret(path: Path | str) -> Path:
    """Write 32 random bytes as 64 hex characters (no newline) to ``path``, mode 0600.

    Flower reads the SuperExec secret file as exact raw bytes, so no trailing newline: the same
    secret then works if someone pastes it into an env var or a compose secret.
    """
    path = Path(path)
    _ensure_dir(path.parent)
    return _write_private(path, secrets.token_hex(32).encode("ascii"))


# --------------------------------------------------------------------------- checks


def check_ca(path: Path | str) -> x509.Certificate:
    """Load and check a CA certificate: a CA (BasicConstraints ca=True), self-signed, in date.

    Raises :class:`CertError` naming ``path`` otherwise.
    """
    path = Path(path)
    cert = _load_cert(path, "CA certificate")
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
    _check_validity(cert, path, "CA certificate")
    return cert


def verify_server_cert(
    ca_cert: Path | str, server_cert: Path | str, server_key: Path | str
) -> x509.Certificate:
    """Check that the SuperLink's cert is signed by the CA, matches its key and is in date.

    Catches the mistakes that otherwise surface as an opaque TLS handshake failure on every
    SuperNode. Raises :class:`CertError` naming the file(s) at fault; returns the server cert.
    """
    ca_path, cert_path, key_path = Path(ca_cert), Path(server_cert), Path(server_key)
    ca = check_ca(ca_path)
    cert = _load_cert(cert_path, "server certificate")
    key = _load_pem_key(key_path, "server key")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(
            f"server certificate {cert_path} is not signed by CA certificate {ca_path}"
        ) from None
    if not _same_public_key(key.public_key(), cert.public_key()):
        raise CertError(f"server key {key_path} does not match server certificate {cert_path}")
    _check_validity(cert, cert_path, "server certificate")
    return cert


def check_site_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """Load a SuperNode key the way Flower does; raise :class:`CertError` if Flower would refuse.

    Expected: an unencrypted OpenSSH private key, EC on a NIST curve (P-256/P-384/P-521).
    """
    path = Path(path)
    expected = "expected an unencrypted OpenSSH EC private key on a NIST curve (e.g. P-384)"
    key = _load_ec_key(path, "site key", "OpenSSH", expected)
    if not isinstance(key.curve, _NIST_CURVES):
        raise CertError(f"site key {path}: curve {key.curve.name}; {expected}")
    return key


def _site_pub_matches(pub_path: Path, key: ec.EllipticCurvePrivateKey) -> bool:
    try:
        pub = serialization.load_ssh_public_key(pub_path.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm):
        return False
    return _same_public_key(key.public_key(), pub)


# --------------------------------------------------------------------------- bundle


def _server_problem(
    ca: Path, cert_path: Path, key_path: Path, wanted: dict[str, x509.GeneralName]
) -> tuple[str | None, list[str]]:
    """Why the existing server cert must be reissued (None if it is fine), and its SANs."""
    try:
        cert = verify_server_cert(ca, cert_path, key_path)
    except CertError as err:
        return str(err), []
    have = cert_sans(cert)
    missing = [k for k in wanted if k not in have]
    if missing:
        return f"SAN(s) {', '.join(missing)} not in the certificate", have
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return f"expires on {cert.not_valid_after_utc:%Y-%m-%d} UTC", have
    return None, have


def ensure_bundle(
    out_dir: Path | str,
    sans: Sequence[str] = DEFAULT_SANS,
    sites: Sequence[str] = (),
    force: bool = False,
) -> CertBundle:
    """Make whatever of the federation's certs, keys and secret is missing in ``out_dir``.

    Idempotent: existing valid files are kept byte-for-byte, so a restarted cluster keeps the CA
    its nodes trust and the site keys registered with the SuperLink. The server cert alone is
    reissued (same CA) when it is missing, broken, near expiry or lacks a requested SAN; the new
    one carries the requested SANs plus those the old one had, so names only accumulate (use
    ``force`` to shrink). A CA or site key that exists but is unusable is an error rather than
    silently replaced, because replacing it breaks every node that trusts or registered it.
    ``force=True`` regenerates everything.
    """
    wanted: dict[str, x509.GeneralName] = {}
    for s in sans:
        n = parse_san(s)
        wanted.setdefault(_san_key(n), n)
    if not wanted:
        raise CertError("at least one SAN is required (e.g. localhost, 127.0.0.1)")
    site_list = list(sites)
    for site in site_list:
        _check_site_name(site)
        if site in (CA_NAME, SERVER_NAME):
            raise CertError(f"site name {site!r} is reserved")
    dupes = sorted({s for s in site_list if site_list.count(s) > 1})
    if dupes:
        raise CertError(f"duplicate site name(s): {', '.join(dupes)}")

    out = _ensure_dir(Path(out_dir))
    ca_cert, ca_key = out / f"{CA_NAME}.crt", out / f"{CA_NAME}.key"
    srv_cert, srv_key = out / f"{SERVER_NAME}.crt", out / f"{SERVER_NAME}.key"
    secret = out / SECRET_NAME
    actions: dict[Path, str] = {}

    def note(path: Path, action: str) -> None:
        actions[path] = action
        if action.startswith("regenerated"):
            log.warning("%s %s", path, action)
        else:
            log.info("%s %s", path, action)

    with _locked(out):
        # CA
        new_ca = False
        if force or (not ca_cert.exists() and not ca_key.exists()):
            existed = ca_cert.exists() or ca_key.exists()
            make_ca(out)
            new_ca = True
            why = "regenerated: --force (every node needs the new ca.crt)"
            for p in (ca_cert, ca_key):
                note(p, why if existed else "created")
        else:
            cert = check_ca(ca_cert)
            key = _load_pem_key(ca_key, "CA key")
            if not _same_public_key(key.public_key(), cert.public_key()):
                raise CertError(
                    f"CA key {ca_key} does not match CA certificate {ca_cert}; restore the pair "
                    "or rerun with --force (every node then needs the new ca.crt)"
                )
            note(ca_cert, "kept")
            note(ca_key, "kept")

        # Server certificate
        problem: str | None
        have: list[str] = []
        if not srv_cert.exists() and not srv_key.exists():
            problem = "missing"
        elif force or new_ca:
            problem = "--force" if force else "new CA"
        else:
            problem, have = _server_problem(ca_cert, srv_cert, srv_key, wanted)
        san_keys = list(wanted) + [k for k in have if k not in wanted and not force]
        if problem is None:
            note(srv_cert, "kept")
            note(srv_key, "kept")
        else:
            make_server_cert(out, ca_cert, ca_key, san_keys, name=SERVER_NAME)
            action = "created" if problem == "missing" else f"regenerated: {problem}"
            note(srv_cert, action)
            note(srv_key, action)
        final_sans = tuple(cert_sans(_load_cert(srv_cert, "server certificate")))

        # SuperExec secret
        if force or not secret.exists():
            existed = secret.exists()
            make_secret(secret)
            note(secret, "regenerated: --force" if existed else "created")
        elif secret.stat().st_size == 0:
            make_secret(secret)
            note(secret, "regenerated: file was empty (Flower refuses an empty secret)")
        else:
            note(secret, "kept")

        # Site keys
        site_keys: dict[str, tuple[Path, Path]] = {}
        for site in site_list:
            priv, pub = out / f"{site}.key", out / f"{site}.pub"
            site_keys[site] = (priv, pub)
            if force or not priv.exists():
                existed = priv.exists() or pub.exists()
                make_site_key(out, site)
                action = (
                    "regenerated: --force; register the new .pub with the SuperLink"
                    if existed
                    else "created"
                )
                note(priv, action)
                note(pub, action)
                continue
            key = check_site_key(priv)
            note(priv, "kept")
            if _site_pub_matches(pub, key):
                note(pub, "kept")
            else:
                _write_public(pub, _ssh_public(key.public_key(), site))
                note(pub, "regenerated: missing or did not match the private key")

    return CertBundle(
        out_dir=out,
        ca_cert=ca_cert,
        ca_key=ca_key,
        server_cert=srv_cert,
        server_key=srv_key,
        superexec_secret=secret,
        site_keys=site_keys,
        sans=final_sans,
        actions=actions,
    )


# --------------------------------------------------------------------------- CLI


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``certs`` on a ``zk0`` argparse subparsers object; sets ``func=run_cli``."""
    p = subparsers.add_parser(
        "certs",
        help="create (or keep) the federation's CA, SuperLink cert, site keys and secret",
        description=(
            "Create what is missing under --out and keep what exists, so a restarted cluster "
            "keeps its CA and registered site keys. Prints paths only, never key material."
        ),
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output dir (default: %(default)s)"
    )
    p.add_argument(
        "--san",
        action="append",
        default=None,
        metavar="NAME",
        help="extra DNS name or IP for the SuperLink cert (repeatable), added to "
        f"{', '.join(DEFAULT_SANS)}",
    )
    p.add_argument(
        "--no-default-sans",
        action="store_true",
        help=f"do not add {', '.join(DEFAULT_SANS)} to the SANs",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--sites",
        type=int,
        default=None,
        metavar="N",
        help=f"make site-0..site-N-1 keys (default: {DEFAULT_SITES})",
    )
    group.add_argument(
        "--site", action="append", default=None, metavar="NAME", help="site name (repeatable)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="regenerate everything (nodes need the new ca.crt; site keys must be re-registered)",
    )
    p.set_defaults(func=run_cli)
    return p


def _sites_from_args(args: argparse.Namespace) -> list[str]:
    if getattr(args, "site", None):
        return list(args.site)
    n = getattr(args, "sites", None)
    n = DEFAULT_SITES if n is None else n
    if n < 0:
        raise CertError(f"--sites must be >= 0, got {n}")
    return [f"site-{i}" for i in range(n)]


def _sans_from_args(args: argparse.Namespace) -> list[str]:
    base = [] if getattr(args, "no_default_sans", False) else list(DEFAULT_SANS)
    return base + list(getattr(args, "san", None) or [])


def run_cli(args: argparse.Namespace) -> int:
    """Run ``zk0 certs``: ensure the bundle and print what was made or kept (paths only)."""
    try:
        bundle = ensure_bundle(
            getattr(args, "out", DEFAULT_OUT),
            sans=_sans_from_args(args),
            sites=_sites_from_args(args),
            force=bool(getattr(args, "force", False)),
        )
    except CertError as err:
        print(f"zk0 certs: {err}", file=sys.stderr)
        return 1
    for path, action in bundle.actions.items():
        print(f"{action.split(':', 1)[0]:<12} {path}" + _reason(action))
    print(f"SANs: {', '.join(bundle.sans)}")
    print(
        f"SuperLink: --ssl-ca-certfile {bundle.ca_cert} --ssl-certfile {bundle.server_cert} "
        f"--ssl-keyfile {bundle.server_key}"
    )
    print(f"SuperExec: --superexec-auth-secret-file {bundle.superexec_secret}")
    if bundle.site_keys:
        name, (priv, pub) = next(iter(bundle.site_keys.items()))
        print(
            f"SuperNode ({name}): --root-certificates {bundle.ca_cert} "
            f"--auth-supernode-private-key {priv}; register with: flwr supernode register {pub}"
        )
    return 0


def _reason(action: str) -> str:
    _, _, why = action.partition(": ")
    return f"  ({why})" if why else ""
