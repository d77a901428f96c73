"""Where a site's private key lies: a scan of folders for the private half of the sites' keys.

A site's private key must exist only in that site's own volume (or on its own box). The scan
reads every file under the given folders, finds each private-key block in it wherever it sits
(a key file, a copy in a bundle, a line of a log, a page of a database) and names the files
holding the private half of one of the given site public keys, and any OpenSSH private key at
all: the coordinator's own keys (CA, SuperLink, coordinator) are PEM, so an OpenSSH private key
on its side can only be a node's key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from certs.keys import same_public_key
from common.signing import load_public_key

PRIVATE_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.S)


def _private_key(block: bytes):
    """The private key in one PEM/OpenSSH block, or None when it cannot be read."""
    try:
        if b"OPENSSH PRIVATE KEY" in block:
            return serialization.load_ssh_private_key(block, None)
        return serialization.load_pem_private_key(block, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def site_private_keys(folders: Iterable[Path], site_pubs: Mapping[str, Path]) -> list[str]:
    """One line per file under ``folders`` that holds a site's private key: the private half of
    a key in ``site_pubs`` (site name -> its ``.pub``), or any OpenSSH private key."""
    publics = {site: load_public_key(path, f"{site}'s public key")
               for site, path in site_pubs.items()}
    found = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            for block in PRIVATE_BLOCK.finditer(path.read_bytes()):
                key = _private_key(block[0])
                owners = [site for site, pub in publics.items()
                          if key is not None and same_public_key(pub, key.public_key())]
                if owners:
                    found.append(f"{path}: the private key of {', '.join(owners)}")
                elif b"OPENSSH" in block[1]:
                    found.append(f"{path}: an OpenSSH private key (a node's key)")
    return found
