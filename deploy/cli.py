"""The ``zk0`` command: certificates, demo data, dataset checks, a lab's SuperNode (as processes
or as a container), site registration, a local cluster, the compose stack's roles, export,
coordinator metrics.

One table lists the commands; each command module exposes ``add_arguments(parser)`` (its flags
only) and ``run_cli(args) -> int``. Modules are imported when the parser is built, so a command
that needs the ML stack loads it only inside ``run_cli``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One ``zk0`` sub-command and the module that implements it."""

    name: str
    module: str  # exposes add_arguments(parser) -> None and run_cli(args) -> int
    help: str
    description: str | None = None  # None: the module's docstring, shown as written


COMMANDS: tuple[Command, ...] = (
    Command(
        "certs",
        "certs.cli",
        help="create (or keep) the federation's CA, SuperLink cert, coordinator signing key, "
             "site keys and SuperExec secret",
        description=(
            "Create what is missing under --out and keep what exists, so a restarted cluster "
            "keeps its CA and registered site keys. Prints paths only, never key material."
        ),
    ),
    Command(
        "demo-data",
        "demo_data.cli",
        help="write synthetic per-site SO-100 datasets (one task archetype per site)",
        description=(
            "Synthetic SO-100 demonstrations, one task archetype per site, written as LeRobot v3 "
            "datasets."
        ),
    ),
    Command(
        "supernode",
        "deploy.lab.launcher",
        help="run this lab's SuperNode, SuperExec, site worker and /metrics, after checking its "
             "settings, keys and dataset",
        description=(
            "Run this lab's SuperNode + SuperExec. Each flag overrides the matching "
            "ZK0_<NAME> environment variable (and .env)."
        ),
    ),
    Command(
        "site-container",
        "deploy.containers.site_container",
        help="run this lab's site as a container (Docker SDK): start, status, logs, stop",
    ),
    Command(
        "check-dataset",
        "deploy.lab.check_dataset",
        help="check a LeRobotDataset against the policy and the federation before joining",
    ),
    Command(
        "site",
        "deploy.coordinator.site_registry",
        help="register a site's key under its name, revoke it, list registrations (coordinator)",
    ),
    Command(
        "cluster",
        "deploy.cluster.cli",
        help="run a federation on a local TLS cluster (SuperLink behind nginx + SuperNodes on "
             "127.0.0.1): report, clean stop",
    ),
    Command(
        "export",
        "deploy.coordinator.export",
        help="write a Hub-ready LeRobot policy folder (with a model card) from a run",
    ),
    Command(
        "stack",
        "deploy.containers.compose_stack",
        help="a zk0 role of docker-compose.yml (init, site-key, demo-data, superlink, "
             "superexec, register, run)",
    ),
    Command(
        "coordinator-metrics",
        "deploy.monitoring.coordinator_metrics",
        help="serve the coordinator's Prometheus metrics next to the SuperLink",
    ),
)


def add_command(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """Register the command ``name`` of :data:`COMMANDS` (its flags and ``func=run_cli``)."""
    command = next(c for c in COMMANDS if c.name == name)
    module = importlib.import_module(command.module)
    if command.description is None:
        p = subparsers.add_parser(
            name,
            help=command.help,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    else:
        p = subparsers.add_parser(name, help=command.help, description=command.description)
    module.add_arguments(p)
    p.set_defaults(func=module.run_cli)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zk0", description="Federated SmolVLA fine-tuning across robot labs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        add_command(sub, command.name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
