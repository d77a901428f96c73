"""The ``zk0`` command: certificates, demo data, a lab's SuperNode, a local cluster, export."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from certs.make import add_cli as certs_cli
    from demo_data.generator import add_cli as demo_cli
    from deploy import export_command
    from deploy.cluster_cli import add_cli as cluster_cli
    from deploy.site_launcher import add_cli as supernode_cli

    parser = argparse.ArgumentParser(
        prog="zk0", description="Federated SmolVLA fine-tuning across robot labs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    certs_cli(sub)
    demo_cli(sub)
    supernode_cli(sub)
    cluster_cli(sub)
    export = sub.add_parser("export", help=export_command.HELP,
                            description=export_command.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    export_command.add_arguments(export)
    export.set_defaults(func=export_command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
