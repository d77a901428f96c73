"""The set of files a federation needs, made once and kept: CA, SuperLink certificate, the
SuperLink's SuperExec secret, the coordinator's signing key and one OpenSSH key per site.

Idempotent on purpose: a restarted cluster must keep the CA its nodes trust and the site keys
registered with the SuperLink, so a file that exists and is valid is never rewritten, and one
that exists but is unusable is an error rather than silently replaced.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from certs.checks import check_site_key, load_ca, now, verify_server_cert
from certs.errors import CertError
from certs.files import load_cert, private_dir, write_public
from certs.keys import (
    COORDINATOR_NAME,
    load_pem_key,
    make_coordinator_key,
    make_secret,
    make_site_key,
    pub_matches,
    ssh_public_line,
)
from certs.names import check_site_name
from certs.x509 import (
    CA_NAME,
    SERVER_NAME,
    cert_sans,
    make_ca,
    make_server_cert,
    missing_sans,
    parse_san,
    san_key,
)
from common import atomic
from common.signing import public_pem

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("certs/generated")
DEFAULT_SANS: tuple[str, ...] = ("localhost", "127.0.0.1")
SECRET_NAME = "superexec.secret"
# A server certificate this close to expiry is reissued (the CA is not).
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class FederationCerts:
    """Paths of everything a federation needs, plus what :func:`ensure_federation_certs` did.

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
    coordinator_key: Path  # signs global models (PEM, 0600, stays with the coordinator)
    coordinator_pub: Path  # ships to every site next to ca.crt
    sans: tuple[str, ...] = ()
    actions: dict[Path, str] = field(default_factory=dict)


def _locked(out_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Serialise runs on one folder (e.g. several compose services starting at once)."""
    return atomic.locked(out_dir / ".lock")


def _server_problem(
    ca: Path, cert_path: Path, key_path: Path, wanted: Sequence[str]
) -> tuple[str | None, list[str]]:
    """Why the existing server cert must be reissued (None if it is fine), and its SANs."""
    try:
        cert = verify_server_cert(ca, cert_path, key_path)
    except CertError as err:
        return str(err), []
    missing = missing_sans(cert, wanted)
    if missing:
        return f"SAN(s) {', '.join(missing)} not in the certificate", cert_sans(cert)
    if cert.not_valid_after_utc - now() < RENEW_BEFORE:
        return f"expires on {cert.not_valid_after_utc:%Y-%m-%d} UTC", cert_sans(cert)
    return None, cert_sans(cert)


def _check_sites(sites: Sequence[str]) -> None:
    for site in sites:
        check_site_name(site)
        if site in (CA_NAME, SERVER_NAME, COORDINATOR_NAME):
            raise CertError(f"site name {site!r} is reserved")
    dupes = sorted({s for s in sites if sites.count(s) > 1})
    if dupes:
        raise CertError(f"duplicate site name(s): {', '.join(dupes)}")


def ensure_site_key(
    out_dir: Path | str, site: str, force: bool = False
) -> tuple[Path, Path, dict[Path, str]]:
    """Make ``<site>.key`` and ``<site>.pub`` in ``out_dir`` if the key is missing, keep a valid
    one (rewriting its ``.pub`` when missing or not its public half). A key that exists but is
    unusable is an error (:func:`check_site_key`), not replaced: the SuperLink knows it by its
    public half. This is all a site needs to make its own key where it will be used (a lab's
    box, a site's container volume). Returns (private, public, {path: what was done})."""
    check_site_name(site)
    out = private_dir(out_dir)
    priv, pub = out / f"{site}.key", out / f"{site}.pub"
    if force or not priv.exists():
        existed = priv.exists() or pub.exists()
        make_site_key(out, site)
        action = ("regenerated: --force; register the new .pub with the SuperLink" if existed
                  else "created")
        return priv, pub, {priv: action, pub: action}
    key = check_site_key(priv)
    if pub_matches(pub, key):
        return priv, pub, {priv: "kept", pub: "kept"}
    write_public(pub, ssh_public_line(key.public_key(), site))
    return priv, pub, {priv: "kept", pub: "regenerated: missing or did not match the private key"}


def ensure_federation_certs(
    out_dir: Path | str,
    sans: Sequence[str] = DEFAULT_SANS,
    sites: Sequence[str] = (),
    force: bool = False,
) -> FederationCerts:
    """Make whatever of the federation's certs, keys and secret is missing in ``out_dir``.

    Existing valid files are kept byte-for-byte. The server cert alone is reissued (same CA) when
    it is missing, broken, near expiry or lacks a requested SAN; the new one carries the
    requested SANs plus those the old one had, so names only accumulate (use ``force`` to
    shrink). A CA or site key that exists but is unusable is an error rather than silently
    replaced, because replacing it breaks every node that trusts or registered it.
    ``force=True`` regenerates everything.
    """
    wanted: dict[str, x509.GeneralName] = {}
    for s in sans:
        n = parse_san(s)
        wanted.setdefault(san_key(n), n)
    if not wanted:
        raise CertError("at least one SAN is required (e.g. localhost, 127.0.0.1)")
    site_list = list(sites)
    _check_sites(site_list)

    out = private_dir(out_dir)
    ca_cert, ca_key = out / f"{CA_NAME}.crt", out / f"{CA_NAME}.key"
    srv_cert, srv_key = out / f"{SERVER_NAME}.crt", out / f"{SERVER_NAME}.key"
    secret = out / SECRET_NAME
    actions: dict[Path, str] = {}

    def note(action: str, *paths: Path) -> None:
        for path in paths:
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
            note(why if existed else "created", ca_cert, ca_key)
        else:
            try:
                load_ca(ca_cert, ca_key)
            except CertError as err:
                raise CertError(
                    f"{err}; restore the pair or rerun with --force (every node then needs the "
                    "new ca.crt)"
                ) from None
            note("kept", ca_cert, ca_key)

        # Server certificate
        problem: str | None
        have: list[str] = []
        if not srv_cert.exists() and not srv_key.exists():
            problem = "missing"
        elif force or new_ca:
            problem = "--force" if force else "new CA"
        else:
            problem, have = _server_problem(ca_cert, srv_cert, srv_key, list(wanted))
        san_keys = list(wanted) + [k for k in have if k not in wanted and not force]
        if problem is None:
            note("kept", srv_cert, srv_key)
        else:
            make_server_cert(out, ca_cert, ca_key, san_keys, name=SERVER_NAME)
            note("created" if problem == "missing" else f"regenerated: {problem}",
                 srv_cert, srv_key)
        final_sans = tuple(cert_sans(load_cert(srv_cert, "server certificate")))

        # SuperExec secret
        if force or not secret.exists():
            existed = secret.exists()
            make_secret(secret)
            note("regenerated: --force" if existed else "created", secret)
        elif secret.stat().st_size == 0:
            make_secret(secret)
            note("regenerated: file was empty (Flower refuses an empty secret)", secret)
        else:
            note("kept", secret)

        # Coordinator signing key
        coord_key, coord_pub = out / f"{COORDINATOR_NAME}.key", out / f"{COORDINATOR_NAME}.pub"
        if force or not coord_key.exists():
            existed = coord_key.exists() or coord_pub.exists()
            make_coordinator_key(out)
            note("regenerated: --force; every site needs the new coordinator.pub" if existed
                 else "created", coord_key, coord_pub)
        else:
            key = load_pem_key(coord_key, "coordinator key")
            note("kept", coord_key)
            if pub_matches(coord_pub, key):
                note("kept", coord_pub)
            else:
                write_public(coord_pub, public_pem(key.public_key()))
                note("regenerated: missing or did not match the private key", coord_pub)

        # Site keys
        site_keys: dict[str, tuple[Path, Path]] = {}
        for site in site_list:
            priv, pub, done = ensure_site_key(out, site, force=force)
            site_keys[site] = (priv, pub)
            for path, action in done.items():
                note(action, path)

    return FederationCerts(
        out_dir=out,
        ca_cert=ca_cert,
        ca_key=ca_key,
        server_cert=srv_cert,
        server_key=srv_key,
        superexec_secret=secret,
        site_keys=site_keys,
        coordinator_key=coord_key,
        coordinator_pub=coord_pub,
        sans=final_sans,
        actions=actions,
    )
