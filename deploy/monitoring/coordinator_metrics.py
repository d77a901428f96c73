"""``zk0 coordinator-metrics``: the coordinator's Prometheus endpoint, next to the SuperLink.

Flower starts a new ServerApp process for every run; zk0's ServerApp writes its metrics (every
site as the coordinator sees it, and every run) into a prometheus-client multiprocess folder.
This long-lived process serves that folder on ``/metrics`` and probes the SuperLink's
``/health`` (``zk0_superlink_up``), so Prometheus has one stable target whose counters never
reset between runs.

Run it on the SuperLink host, and give the SuperExec that runs the ServerApps the same folder::

    export PROMETHEUS_MULTIPROC_DIR=/var/lib/zk0/metrics     # in the SuperExec's environment
    zk0 coordinator-metrics --multiproc-dir /var/lib/zk0/metrics --wipe \\
        --listen 127.0.0.1:9400 --superlink 127.0.0.1:8000 --ca-cert certs/ca.crt
    flower-superexec --runtime-api-address 127.0.0.1:8000 ...   # started after it

``--wipe`` clears metric files left from a previous deployment: only when no ServerApp is
running (start it before the SuperExec).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from deploy.monitoring.metrics_export import (
    COORDINATOR_PORT,
    DEFAULT_HOST,
    parse_listen,
    prepare_multiproc_dir,
    serve_coordinator,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--multiproc-dir", type=Path, required=True,
                   help="the ServerApps' PROMETHEUS_MULTIPROC_DIR (created 0700 if missing)")
    p.add_argument("--listen", default=f"{DEFAULT_HOST}:{COORDINATOR_PORT}",
                   help=f"host:port to serve /metrics on (default {DEFAULT_HOST}:"
                        f"{COORDINATOR_PORT}; loopback unless you mean otherwise)")
    p.add_argument("--superlink", default=None,
                   help="SuperLink host:port to probe (/health over TLS) for zk0_superlink_up")
    p.add_argument("--ca-cert", type=Path, default=None,
                   help="federation CA certificate that signed the SuperLink's")
    p.add_argument("--probe-interval", type=float, default=5.0,
                   help="seconds between SuperLink probes (default 5)")
    p.add_argument("--wipe", action="store_true",
                   help="remove metric files left in the folder first (no ServerApp running)")


def run_cli(args: argparse.Namespace) -> int:
    problems = []
    try:
        parse_listen(args.listen, "--listen")
    except ValueError as err:
        problems.append(str(err))
    if args.superlink is not None:
        if args.ca_cert is None:
            problems.append("--superlink needs --ca-cert (the SuperLink is probed over TLS)")
        elif not args.ca_cert.expanduser().is_file():
            problems.append(f"--ca-cert {args.ca_cert}: file not found")
    if args.probe_interval <= 0:
        problems.append(f"--probe-interval {args.probe_interval}: must be > 0")
    if problems:
        print("zk0 coordinator-metrics: refusing to start:", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
        return 2
    folder = prepare_multiproc_dir(args.multiproc_dir, wipe=args.wipe)
    ca = args.ca_cert.expanduser().resolve() if args.ca_cert else None
    server = serve_coordinator(folder, args.listen, args.superlink, ca, args.probe_interval)
    print(f"zk0 coordinator-metrics: serving {server.url} from {folder}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.close()
    return 0
