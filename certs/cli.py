"""``zk0 certs``: create (or keep) the federation's CA, SuperLink cert, site keys and secret.

Prints what it made or kept and the flags each Flower process needs: paths only, never key
material.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from certs.errors import CertError
from certs.federation import DEFAULT_OUT, DEFAULT_SANS, ensure_federation_certs

DEFAULT_SITES = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``zk0 certs`` flags (the parser itself is made by :mod:`deploy.cli`)."""
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


def _sites_from_args(args: argparse.Namespace) -> list[str]:
    if args.site:
        return list(args.site)
    n = DEFAULT_SITES if args.sites is None else args.sites
    if n < 0:
        raise CertError(f"--sites must be >= 0, got {n}")
    return [f"site-{i}" for i in range(n)]


def _sans_from_args(args: argparse.Namespace) -> list[str]:
    base = [] if args.no_default_sans else list(DEFAULT_SANS)
    return base + list(args.san or [])


def _reason(action: str) -> str:
    _, _, why = action.partition(": ")
    return f"  ({why})" if why else ""


def run_cli(args: argparse.Namespace) -> int:
    """Run ``zk0 certs``: ensure the files and print what was made or kept (paths only)."""
    try:
        made = ensure_federation_certs(
            args.out, sans=_sans_from_args(args), sites=_sites_from_args(args), force=args.force
        )
    except CertError as err:
        print(f"zk0 certs: {err}", file=sys.stderr)
        return 1
    for path, action in made.actions.items():
        print(f"{action.split(':', 1)[0]:<12} {path}" + _reason(action))
    print(f"SANs: {', '.join(made.sans)}")
    print(
        f"SuperLink: --ssl-ca-certfile {made.ca_cert} --ssl-certfile {made.server_cert} "
        f"--ssl-keyfile {made.server_key}"
    )
    print(f"SuperExec: --superexec-auth-secret-file {made.superexec_secret}; "
          f"env ZK0_COORDINATOR_KEY={made.coordinator_key}")
    print(f"Sites get: {made.ca_cert} and {made.coordinator_pub} (public; never the .key files)")
    if made.site_keys:
        name, (priv, pub) = next(iter(made.site_keys.items()))
        print(
            f"SuperNode ({name}): --root-certificates {made.ca_cert} "
            f"--auth-supernode-private-key {priv}; register with: zk0 site register {pub} "
            f"--name {name}"
        )
    return 0
