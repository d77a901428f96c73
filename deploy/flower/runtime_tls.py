"""TLS for a SuperNode's own Runtime API (what its SuperExec and ClientApps call).

Why TLS on a loopback port: with plain HTTP nothing authenticates that server, so any local
process that grabs the port first (e.g. while the SuperNode restarts) would receive task tokens
and the global model, and once SuperNode and SuperExec sit in separate containers the traffic
leaves the host's loopback. In Flower 1.42 ``flower-supernode`` serves it with
``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile`` and ``flower-superexec --root-certificates``
verifies it. A lab cannot get certificates from the federation CA (its key stays with the
operator), hence a per-node throwaway CA.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from certs.checks import now
from certs.files import load_cert, private_dir, write_public
from certs.x509 import build_ca, build_server_cert, cert_pem, missing_sans, write_key_and_cert

# A certificate this close to expiry is replaced at the next start.
RENEW_BEFORE = dt.timedelta(days=1)


@dataclass(frozen=True)
class RuntimeTls:
    """TLS files of a SuperNode's local Runtime API (server cert/key, CA that verifies it)."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def in_dir(cls, directory: Path) -> RuntimeTls:
        """The file names inside ``directory`` (nothing is read or created)."""
        return cls(directory / "runtime.crt", directory / "runtime.key", directory / "ca.crt")


def _usable(tls: RuntimeTls, hosts: Sequence[str]) -> bool:
    if not (tls.key.exists() and tls.ca.exists()):
        return False
    try:
        cert = load_cert(tls.cert, "runtime certificate")
    except ValueError:
        return False
    return cert.not_valid_after_utc > now() + RENEW_BEFORE and not missing_sans(cert, hosts)


def ensure_runtime_tls(
    directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 365
) -> RuntimeTls:
    """Server certificate for a SuperNode's loopback Runtime API, made once and reused.

    Signed by a one-off CA whose private key is never written to disk: nobody can mint another
    certificate this SuperExec would trust. Reused while it covers ``hosts`` and is valid.
    ``directory`` is made 0700, also when it exists (it holds the server key).
    """
    tls = RuntimeTls.in_dir(Path(directory))
    private_dir(directory, tighten=True)  # it holds the server key, also when kept
    if _usable(tls, hosts):
        return tls
    ca_key, ca_cert = build_ca("zk0 SuperNode runtime CA", days)
    key, cert = build_server_cert(ca_key, ca_cert, list(hosts), hosts[0], days)
    write_key_and_cert(key, cert, tls.key, tls.cert)
    write_public(tls.ca, cert_pem(ca_cert))
    return tls
