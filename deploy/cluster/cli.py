"""``zk0 cluster``: a whole federation on this machine, from nothing to a report, in one command.

Makes what is missing (demo datasets, CA + SuperLink certificate + coordinator and site keys),
starts the SuperLink on loopback, nginx as the labs' only entry in front of it (``/v1/fleet/*``
and ``/health`` only), and one SuperNode per site joining through that entry, as separate
processes on 127.0.0.1 with TLS, node authentication, signed messages and process isolation on;
runs the federation with ``flwr run --stream`` (progress on the console; the operator's ``flwr``
talks to the SuperLink directly), prints the per-site held-out action MSE per round, and stops
every process it started, also on Ctrl-C, SIGTERM or SIGHUP (:mod:`deploy.flower.signals`). Without
nginx it still runs, sites dialling the SuperLink directly, and says that the entry is not
shielded.

Everything that can be checked is checked before the first process starts: every run-config key
and type, the policy name and ``policy-options`` (the policy's config is built), and every
site's dataset against the first site's (:mod:`supernode.dataset_checks`).

Metrics: the coordinator's and every site's Prometheus endpoint are printed at start
(``--metrics-port P``: coordinator on P, site-N on P + 1 + N; free ports by default;
``--no-metrics`` turns them off). ``--prometheus`` also starts Debian's Prometheus with the
project's config and alert rules (deploy/monitoring/prometheus/) pointed at them, and prints its
URL; ``--hold`` keeps everything up after the run until Ctrl-C, to look at it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from common.settings import NodeConfig, RunConfig, SettingsError, parse_overrides
from deploy.flower.signals import Stopped, stop_on_signals
from deploy.monitoring.metrics_export import COORDINATOR_PORT

REPO = Path(__file__).resolve().parents[2]
# The offline demo: tiny SmolVLA on the generated SO-100 data. From the learning-quality study
# (docs/explanation/how-it-learns.md): more rounds of fewer local steps learn more per step on
# heterogeneous sites; 10 rounds keep the demo to ~10 minutes on 2 CPU cores.
DEMO_OVERRIDES: dict[str, Any] = {
    "policy": "smolvla-tiny",
    "num-server-rounds": 10,
    "local-steps": 10,
    "batch-size": 8,
    "eval-samples": 64,
}


def site_configs(data_dir: Path, sites: int, eval_episodes: int, threads: int) -> list[NodeConfig]:
    return [
        NodeConfig(
            site_name=f"site-{i}",
            dataset_root=str((data_dir / f"site-{i}").resolve()),
            eval_episodes=eval_episodes,
            torch_threads=threads,
        )
        for i in range(sites)
    ]


def ensure_demo_data(data_dir: Path, sites: int) -> None:
    """Generate the demo datasets unless every site folder already holds one."""
    if all((data_dir / f"site-{i}" / "meta" / "info.json").is_file() for i in range(sites)):
        return
    from demo_data import DemoSpec, make_demo_datasets

    print(f"[zk0] generating demo datasets for {sites} sites in {data_dir}", flush=True)
    make_demo_datasets(data_dir, DemoSpec(num_sites=sites), overwrite=True)


def check_run_config(values: dict[str, Any]) -> RunConfig:
    """Every run-config key and type, then the policy itself (name, ``policy-options``,
    ``pretrained-path``): :class:`SettingsError` before anything starts."""
    from common.policy_factory import make_policy_config

    run = RunConfig.with_overrides(values)
    make_policy_config(run, "cpu")
    return run


def check_sites(nodes: list[NodeConfig]) -> None:
    """Each site's dataset, against the first site's features and fps (what stage 0 would
    find, but before any process starts); raises ValueError with every problem."""
    from supernode.dataset_checks.expectation import Expectation
    from supernode.preflight import SiteCheckError, check_site
    from supernode.site_dataset import open_metadata

    reference = Expectation.of_dataset(open_metadata(nodes[0]), f"{nodes[0].site_name}'s data")
    problems = []
    for node in nodes:  # what each lab's launcher checks before connecting
        try:
            summary = check_site(node, reference)
        except SiteCheckError as err:
            problems.append(str(err))
            continue
        print(f"[zk0] {summary.describe()}", flush=True)
        for line in summary.warnings:
            print(f"[zk0] {node.site_name}: {line}", flush=True)
    if problems:
        raise ValueError("\n".join(problems))


def run_cluster(
    work_dir: Path,
    sites: int,
    overrides: dict[str, Any],
    data_dir: Path | None = None,
    eval_episodes: int = 2,
    torch_threads: int = 1,
    timeout: float | None = None,
    *,
    metrics: bool = True,
    metrics_port: int | None = None,
    prometheus_port: int | None = None,
    hold: bool = False,
) -> dict[str, Any]:
    """Run one federation on a fresh local cluster; return the run folder's eval history.

    ``prometheus_port``: also run Prometheus there (on this cluster's metrics endpoints).
    """
    from deploy.cluster.local_cluster import LocalCluster

    work_dir = work_dir.resolve()
    data_dir = (data_dir or work_dir / "data").resolve()
    values = {**DEMO_OVERRIDES, "min-sites": sites,
              "output-dir": str(work_dir / "runs"), **overrides}
    check_run_config(values)  # before any data is generated or any process starts
    ensure_demo_data(data_dir, sites)
    nodes = site_configs(data_dir, sites, eval_episodes, torch_threads)
    check_sites(nodes)
    if prometheus_port is not None and not metrics:
        raise ValueError("--prometheus needs the metrics endpoints (drop --no-metrics)")
    prometheus = None
    with LocalCluster(REPO, nodes, work_dir, metrics=metrics,
                      metrics_port=metrics_port) as cluster:
        print(f"[zk0] SuperLink https://{cluster.address} (loopback: the operator's flwr and "
              f"zk0 site, FLWR_HOME={cluster.flwr_home}); logs in {cluster.logs}", flush=True)
        if cluster.shielded:
            print(f"[zk0] labs' entry https://{cluster.site_address} (nginx: /v1/fleet/* and "
                  f"/health only); {sites} authenticated SuperNodes joined through it",
                  flush=True)
        else:
            print(f"[zk0] WARNING: nginx not found, the entry is NOT shielded: {sites} "
                  f"SuperNodes dial the SuperLink directly, whose Control API has no "
                  f"authentication. Install nginx (scripts/system-deps.sh as root) for the "
                  f"shielded layout.", file=sys.stderr, flush=True)
        try:
            if metrics:
                prometheus = announce_metrics(cluster, work_dir, prometheus_port)
            result = cluster.run(values, timeout=timeout)
            if hold:
                _hold(prometheus)
        finally:
            if prometheus is not None:
                prometheus.stop()
    if not result.ok:
        raise RuntimeError(
            f"run {result.run_id} ended {result.status!r}; see {work_dir / 'logs'}"
        )
    run_dir = work_dir / "runs" / f"run-{result.run_id}"
    history = json.loads((run_dir / "eval_history.json").read_text())
    return {"run_dir": str(run_dir), "history": history, "seconds": result.duration_s}


def announce_metrics(cluster, work_dir: Path, prometheus_port: int | None,
                     scrape_interval: str = "5s"):
    """Print where ``cluster``'s metrics are served; with a port, start Prometheus on them
    (the project's config and rules, under ``work_dir/prometheus``) and return it."""
    from deploy.monitoring.prometheus_server import PrometheusServer, render_config

    endpoints = cluster.metrics_endpoints
    print(f"[zk0] metrics: coordinator http://{endpoints['coordinator']}/metrics", flush=True)
    for name, address in endpoints["sites"].items():
        print(f"[zk0] metrics: {name} http://{address}/metrics", flush=True)
    if prometheus_port is None:
        return None
    config = render_config(endpoints["coordinator"], endpoints["sites"],
                           scrape_interval=scrape_interval)
    server = PrometheusServer(work_dir / "prometheus", config, prometheus_port).start()
    print(f"[zk0] Prometheus {server.url} (alerts: {server.url}/alerts; config "
          f"{server.config_path})", flush=True)
    return server


def _hold(prometheus) -> None:
    where = f"; Prometheus {prometheus.url}" if prometheus is not None else ""
    print(f"[zk0] run finished; cluster and metrics stay up{where}. Ctrl-C to stop.", flush=True)
    import time

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("[zk0] stopping", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``zk0 cluster`` flags (the parser itself is made by :mod:`deploy.cli`)."""
    p.add_argument("--sites", type=int, default=4,
                   help="SuperNodes (sites) to start, each with its own dataset and key")
    p.add_argument("--work-dir", type=Path, default=Path(".zk0/cluster"),
                   help="certs, SuperLink state, logs and runs (default: .zk0/cluster)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with site-0..site-N-1 LeRobotDatasets (default: generated demo "
                        "data in WORK_DIR/data)")
    p.add_argument("--eval-episodes", type=int, default=2, help="held out per site")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads per site process (sites share this machine's cores)")
    p.add_argument("--timeout", type=float, default=None, help="stop the run after N seconds")
    p.add_argument("-c", "--run-config", action="append", default=[], metavar="KEY=VALUE",
                   help="run config override, as for `flwr run -c` (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="DEBUG logs from every process (sets ZK0_LOG_LEVEL=DEBUG)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help=f"coordinator /metrics port, site-N on the port + 1 + N (e.g. "
                        f"{COORDINATOR_PORT}, as deploy/monitoring/prometheus/prometheus.yml "
                        "expects; "
                        "default: free ports)")
    p.add_argument("--no-metrics", action="store_true", help="serve no Prometheus metrics")
    p.add_argument("--prometheus", nargs="?", type=int, const=9090, default=None,
                   metavar="PORT",
                   help="also run Prometheus (Debian package) on 127.0.0.1:PORT (default 9090) "
                        "with the project's config and alert rules")
    p.add_argument("--hold", action="store_true",
                   help="keep the cluster, metrics and Prometheus up after the run (Ctrl-C)")


def run_cli(args: argparse.Namespace) -> int:
    if args.verbose:  # inherited by the SuperLink, SuperNodes, SuperExecs and every app
        os.environ["ZK0_LOG_LEVEL"] = "DEBUG"
    try:
        overrides = parse_overrides(args.run_config)
        with stop_on_signals():  # SIGTERM/SIGHUP unwind like Ctrl-C: every process stopped
            out = run_cluster(args.work_dir, args.sites, overrides, args.data_dir,
                              args.eval_episodes, args.torch_threads, args.timeout,
                              metrics=not args.no_metrics, metrics_port=args.metrics_port,
                              prometheus_port=args.prometheus, hold=args.hold)
    except Stopped as stop:
        print(f"zk0 cluster: {stop}; every process it started has been stopped",
              file=sys.stderr)
        return stop.exit_code
    except SettingsError as err:
        print(f"zk0 cluster: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        print(f"zk0 cluster: {err}", file=sys.stderr)
        return 1
    from superlink.reports import format_history

    print(f"\n[zk0] run folder: {out['run_dir']} ({out['seconds']:.0f} s)")
    print("[zk0] held-out action MSE per site (global model after each round):")
    print(format_history(out["history"]))
    print(f"[zk0] summary page: {Path(out['run_dir']) / 'summary.html'}")
    return 0
