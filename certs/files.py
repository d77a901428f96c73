"""Reading and writing the federation's files: private ones 0600 in a 0700 folder, atomically.

Writes go through :mod:`common.atomic` (temp file born with the final mode, fsync, rename), so a
key is never readable by others and a crash never leaves half a certificate. Reads name the file
and the problem in a :class:`CertError` instead of a bare ``OSError`` or parser error.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509

from certs.errors import CertError
from common import atomic

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


def private_dir(folder: Path | str, *, tighten: bool = False) -> Path:
    """Create ``folder`` as 0700 (it holds private keys); an existing folder keeps its mode,
    unless ``tighten`` (a folder zk0 owns outright, e.g. a SuperNode's runtime-TLS folder):
    then it is made 0700 too."""
    folder = Path(folder)
    if not folder.is_dir():
        folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(folder, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
    elif tighten and folder.stat().st_mode & 0o077:
        os.chmod(folder, PRIVATE_DIR_MODE)
    return folder


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> Path:
    """Write a key or secret atomically, mode 0600 (see :func:`common.atomic.write_bytes`)."""
    return atomic.write_bytes(path, data, PRIVATE_MODE, exclusive=exclusive)


def write_public(path: Path, data: bytes) -> Path:
    """Write a certificate or public key atomically, mode 0644."""
    return atomic.write_bytes(path, data, PUBLIC_MODE)


def read_file(path: Path | str, what: str) -> bytes:
    """The bytes of ``path``; :class:`CertError` "<what> <path>: <why>" if it cannot be read."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{what} {path}: file not found") from None
    except OSError as err:
        raise CertError(f"{what} {path}: cannot read ({err.strerror})") from None


def load_cert(path: Path | str, what: str) -> x509.Certificate:
    """A PEM certificate from ``path``, naming the file if it is missing or not PEM X.509."""
    data = read_file(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertError(f"{what} {path}: not a PEM X.509 certificate") from None
