"""``zk0 site``: the coordinator binds a site's name to its key, lists the bindings, revokes them.

Identity in zk0 comes from authentication: the SuperLink admits a SuperNode only with a
registered key, and the ServerApp names every report, failure and metric after the name
registered with that key (:mod:`superlink.authenticity`), never after what a site says about
itself. So registration is where a name is bound, once:

* ``zk0 site register lab-a.pub --name lab-a`` wraps ``flwr supernode register`` and refuses a
  name that an active node already holds, or a key that is already registered;
* ``zk0 site revoke lab-a`` wraps ``flwr supernode unregister`` for every active node with that
  name: Flower refuses the key from its next Fleet request on (a node in the middle of a round
  cannot deliver its update), and a SuperNode restarted with it exits (code 305);
* ``zk0 site list`` shows node id, name, status and key fingerprint.

Everything goes to the Control API on the SuperLink's private address (its ``flwr``
connection in ``$FLWR_HOME/config.toml``): the labs' entry refuses ``/v1/control/*``. A remote
operator forwards the port over SSH first (docs/how-to/register-and-revoke-a-site.md).
``flwr supernode list`` omits names and keys, so the list is read from the Control API's
``ListNodes`` directly.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from certs.errors import CertError
from certs.names import check_site_name
from common import signing
from deploy.flower import flwr_cli

ACTIVE = ("registered", "online", "offline")  # Flower's states before "unregistered"


class SiteRegistryError(RuntimeError):
    """A registration or revocation that would break the name <-> key binding, or failed."""


@dataclass(frozen=True)
class RegisteredNode:
    """One node as the SuperLink has it (no secret: the fingerprint of a public key)."""

    node_id: int
    name: str
    status: str
    fingerprint: str
    registered_at: str

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def default_flwr_home() -> Path:
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


def list_nodes(flwr_home: Path, connection: str | None = None) -> list[RegisteredNode]:
    """Every node the SuperLink knows, with the name and key registered for it."""
    from flwr.proto.control_pb2 import ListNodesRequest
    from flwr.supercore.control import ControlHttpClient

    _, address, ca = flwr_cli.read_connection(flwr_home, connection)
    try:
        ca_pem = ca.read_bytes()
    except OSError as err:
        raise SiteRegistryError(f"CA certificate {ca} of the connection: {err.strerror}") from None
    client = ControlHttpClient.from_server_address(
        address, insecure=False, root_certificates=ca_pem, interceptors=[]
    )
    try:
        infos = client.ListNodes(ListNodesRequest()).nodes_info
    except Exception as err:  # httpx/HTTP errors: say which SuperLink did not answer
        raise SiteRegistryError(f"Control API at {address}: {type(err).__name__}: {err}") from None
    finally:
        client.close()
    nodes = []
    for info in infos:
        try:
            fp = signing.fingerprint(signing.parse_public_key(bytes(info.public_key)))
        except signing.KeyFileError:
            fp = "(no usable key)"
        nodes.append(RegisteredNode(int(info.node_id), str(info.name), str(info.status), fp,
                                    str(info.registered_at)))
    return sorted(nodes, key=lambda n: (n.name, n.node_id))


def register_site(
    flwr_home: Path, pubkey: Path, name: str, connection: str | None = None
) -> int:
    """Bind ``name`` to the key in ``pubkey`` (an OpenSSH or PEM EC public key); node id."""
    try:
        check_site_name(name)
    except CertError as err:
        raise SiteRegistryError(str(err)) from None
    try:
        key = signing.load_public_key(pubkey, "site public key")
    except signing.KeyFileError as err:
        raise SiteRegistryError(str(err)) from None
    fp = signing.fingerprint(key)
    conn, _, _ = flwr_cli.read_connection(flwr_home, connection)
    for node in list_nodes(flwr_home, conn):
        if node.active and node.name == name:
            raise SiteRegistryError(
                f"site name {name!r} is already bound to node {node.node_id} (key "
                f"{node.fingerprint}, {node.status}); revoke it first: zk0 site revoke {name}"
            )
        if node.active and node.fingerprint == fp:
            raise SiteRegistryError(
                f"key {pubkey} ({fp}) is already registered as node {node.node_id} "
                f"{node.name!r}; a key belongs to one site"
            )
    try:
        return flwr_cli.register_supernode(flwr_home, conn, Path(pubkey), name)
    except flwr_cli.FlwrCliError as err:
        raise SiteRegistryError(str(err)) from None


def revoke_site(
    flwr_home: Path,
    name: str | None = None,
    node_id: int | None = None,
    connection: str | None = None,
) -> list[RegisteredNode]:
    """Unregister every active node registered as ``name`` (or the node ``node_id``)."""
    if (name is None) == (node_id is None):
        raise SiteRegistryError("name a site or give --node-id (one of the two)")
    conn, _, _ = flwr_cli.read_connection(flwr_home, connection)
    targets = [n for n in list_nodes(flwr_home, conn)
               if n.active and (n.name == name if name is not None else n.node_id == node_id)]
    if not targets:
        what = f"site {name!r}" if name is not None else f"node {node_id}"
        raise SiteRegistryError(f"no active registration for {what} (see: zk0 site list)")
    for node in targets:
        try:
            flwr_cli.unregister_supernode(flwr_home, conn, node.node_id)
        except flwr_cli.FlwrCliError as err:
            raise SiteRegistryError(str(err)) from None
    return targets


# -- CLI ---------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``zk0 site register|revoke|list`` (the parser itself is made by :mod:`deploy.cli`)."""
    p.add_argument("--flwr-home", type=Path, default=None,
                   help="the operator's FLWR_HOME with the SuperLink connection (default: "
                        "$FLWR_HOME, else ~/.flwr; zk0 cluster: WORK_DIR/flwr-home)")
    p.add_argument("--connection", default=None,
                   help="connection name in FLWR_HOME/config.toml (default: its default)")
    sub = p.add_subparsers(dest="action")  # none: list
    reg = sub.add_parser("register", help="bind a site name to its public key")
    reg.add_argument("pubkey", type=Path, help="the site's public key (<site>.pub)")
    reg.add_argument("--name", required=True, help="the site's name in every report")
    rev = sub.add_parser("revoke", help="unregister a site: its key is refused from now on")
    rev.add_argument("name", nargs="?", default=None, help="the site's registered name")
    rev.add_argument("--node-id", type=int, default=None, help="or the node id")
    sub.add_parser("list", help="registered nodes: id, name, status, key fingerprint (default)")


def run_cli(args: argparse.Namespace) -> int:
    home = args.flwr_home or default_flwr_home()
    try:
        if args.action == "register":
            node_id = register_site(home, args.pubkey, args.name, args.connection)
            print(f"site {args.name!r} registered as node {node_id}")
        elif args.action == "revoke":
            for node in revoke_site(home, args.name, args.node_id, args.connection):
                print(f"revoked node {node.node_id} {node.name!r} ({node.fingerprint})")
        else:
            print(f"{'node id':>20}  {'name':<20} {'status':<13} key")
            for node in list_nodes(home, args.connection):
                print(f"{node.node_id:>20}  {node.name or '-':<20} {node.status:<13} "
                      f"{node.fingerprint}")
    except (SiteRegistryError, flwr_cli.FlwrCliError) as err:
        print(f"zk0 site: {err}", file=sys.stderr)
        return 1
    return 0
