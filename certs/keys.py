"""EC keys (generating, loading, comparing), the sites' OpenSSH keys and shared secrets.

Why this shape (Flower 1.42):

* SuperNodes authenticate with their own EC key in OpenSSH format on a NIST curve
  (``load_ssh_private_key``; ``flwr supernode register site.pub`` uses ``load_ssh_public_key``);
  Ed25519 and RSA are refused, so P-384 is used for every key, TLS ones included.
* A SuperExec secret file is read as exact raw bytes, so it is written as hex text with no
  trailing newline (the same bytes whether passed as a file or copied into an env var).
* The coordinator signs every global model and query (:mod:`common.signing`); its key pair is
  ``coordinator.key`` (PEM, 0600, stays on the coordinator host) and ``coordinator.pub``
  (PEM, shipped to every site next to ``ca.crt``).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.errors import CertError
from certs.files import private_dir, read_file, write_private, write_public
from certs.names import check_site_name
from common.signing import KeyFileError, load_public_key, public_pem

CURVE = ec.SECP384R1
NIST_CURVES = (ec.SECP192R1, ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
SECRET_BYTES = 32
COORDINATOR_NAME = "coordinator"  # files coordinator.key / coordinator.pub


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-384 private key (CA, server, runtime TLS and site keys alike)."""
    return ec.generate_private_key(CURVE())


def pem_private_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: accepted by Python's ssl (uvicorn) and by gRPC alike."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_ec_key(path: Path, what: str, fmt: str, expected: str) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted EC private key (``fmt``: PEM or OpenSSH), naming the file on error."""
    load = (serialization.load_pem_private_key if fmt == "PEM"
            else serialization.load_ssh_private_key)
    data = read_file(path, what)
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


def load_pem_key(path: Path, what: str) -> ec.EllipticCurvePrivateKey:
    """A PEM EC private key (CA or server key), naming the file if it is anything else."""
    return load_ec_key(path, what, "PEM", "expected an unencrypted PEM EC private key")


def same_public_key(a: ec.EllipticCurvePublicKey, b: object) -> bool:
    """True if ``b`` is the same EC public key as ``a`` (a key pair or cert/key match)."""
    return isinstance(b, ec.EllipticCurvePublicKey) and a.public_numbers() == b.public_numbers()


def ssh_public_line(key: ec.EllipticCurvePublicKey, site_name: str) -> bytes:
    """The ``<site>.pub`` content: one OpenSSH public key line with a ``zk0-<site>`` comment."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + f" zk0-{site_name}\n".encode()


def make_site_key(out_dir: Path | str, site_name: str) -> tuple[Path, Path]:
    """Create a SuperNode's P-384 key: ``<site>.key`` (OpenSSH private, no passphrase, 0600)
    and ``<site>.pub`` (OpenSSH public line, for ``flwr supernode register``).

    Overwrites existing files: a new key must be registered with the SuperLink again.
    Returns (private, public).
    """
    check_site_name(site_name)
    out = private_dir(out_dir)
    key = new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    priv_path = write_private(out / f"{site_name}.key", private)
    pub_path = write_public(out / f"{site_name}.pub", ssh_public_line(key.public_key(), site_name))
    return priv_path, pub_path


def make_coordinator_key(out_dir: Path | str) -> tuple[Path, Path]:
    """Create the coordinator's P-384 signing key: ``coordinator.key`` (PEM PKCS#8, 0600, in a
    0700 folder) and ``coordinator.pub`` (PEM, 0644, for the sites). Overwrites existing files:
    every site then needs the new ``coordinator.pub``. Returns (private, public)."""
    out = private_dir(out_dir)
    key = new_key()
    priv = write_private(out / f"{COORDINATOR_NAME}.key", pem_private_bytes(key))
    pub = write_public(out / f"{COORDINATOR_NAME}.pub", public_pem(key.public_key()))
    return priv, pub


def pub_matches(pub_path: Path, key: ec.EllipticCurvePrivateKey) -> bool:
    """True if ``pub_path`` holds the public half of ``key``, as an OpenSSH line (``<site>.pub``)
    or PEM (``coordinator.pub``); False if missing, unreadable or another key."""
    try:
        pub = load_public_key(pub_path)
    except KeyFileError:
        return False
    return same_public_key(key.public_key(), pub)


def make_secret(path: Path | str, *, keep_existing: bool = False) -> Path:
    """Write 32 random bytes as 64 hex characters (no newline) to ``path``: mode 0600, its
    folder created 0700 if missing.

    Flower reads a SuperExec secret file as exact raw bytes, so no trailing newline: the same
    secret then works if someone pastes it into an env var or a compose secret. The content
    never appears in command lines or logs, only the path.

    ``keep_existing=True`` leaves a file that is already there untouched (a site's secret must
    stay what its running SuperExec was started with); the check and the create are one step,
    so two starters at once cannot both write.
    """
    path = Path(path)
    private_dir(path.parent)
    data = secrets.token_hex(SECRET_BYTES).encode("ascii")
    if not keep_existing:
        return write_private(path, data)
    try:
        return write_private(path, data, exclusive=True)
    except FileExistsError:
        return path
