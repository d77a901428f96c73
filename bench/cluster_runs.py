"""Shared helpers for benchmarks that run the real local TLS cluster: demo data, a cluster
with a process-tree memory sampler, and reading a finished run's round reports."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.settings import NodeConfig
from deploy.flower.env import SITE_SUPEREXEC_POLL_SECONDS

REPO = Path(__file__).resolve().parent.parent
WORKER_KIND = "zk0-worker"


def demo_nodes(root: Path, sites: int, threads: int = 1) -> list[NodeConfig]:
    """Demo datasets for ``sites`` sites under ``root`` (generated once) as node configs."""
    from deploy.cluster.cli import ensure_demo_data, site_configs

    ensure_demo_data(root, sites)
    return site_configs(root, sites, eval_episodes=2, threads=threads)


@dataclass
class RssSampler:
    """Peak RSS per process kind (ServerApp, ClientApp, SuperLink, ...) of a cluster's tree."""

    interval: float = 0.25
    peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def kind(cmdline: list[str]) -> str:
        text = " ".join(cmdline)
        for name in ("flwr-serverapp", "flwr-clientapp", "flower-superlink",
                     "flower-supernode", "flower-superexec"):
            if name in text:
                return name
        if "supernode_waits" in text:  # Flower's SuperNode, with zk0's waits
            return "flower-supernode"
        if "supernode.worker" in text:
            return WORKER_KIND
        return "other"

    def sample(self, pids: list[int]) -> None:
        import psutil

        for pid in pids:
            try:
                p = psutil.Process(pid)
                kind, rss = self.kind(p.cmdline()), p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.peaks[kind] = max(self.peaks.get(kind, 0), rss)

    @contextmanager
    def watching(self, cluster) -> Iterator[RssSampler]:
        def loop() -> None:
            while not self._stop.is_set():
                self.sample(cluster.alive_pids())
                self._stop.wait(self.interval)

        thread = threading.Thread(target=loop, daemon=True, name="rss-sampler")
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def site_cpu_seconds(cluster, site: str) -> float:
    """CPU seconds used so far by one site's own processes: SuperNode, and its worker or its
    SuperExec (with any ClientApp it runs)."""
    import psutil

    procs = cluster._site_procs[site]
    groups = [procs.supernode, procs.superexec]
    if site in cluster.workers and cluster.workers[site].current is not None:
        groups.append(cluster.workers[site].current)
    total = 0.0
    for proc in groups:
        for pid in proc.alive_pids() if proc is not None else []:
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


def idle_cpu(cluster, site: str, seconds: float) -> float:
    """Share of one core an idle site (no run) uses, measured over ``seconds``."""
    before = site_cpu_seconds(cluster, site)
    time.sleep(seconds)
    return (site_cpu_seconds(cluster, site) - before) / seconds


def run_federation(work: Path, nodes: list[NodeConfig], overrides: dict[str, Any],
                   sampler: RssSampler | None = None, *, workers: bool = True,
                   superexec_poll: float | None = SITE_SUPEREXEC_POLL_SECONDS,
                   idle_seconds: float = 0.0) -> dict[str, Any]:
    """One federation on a fresh cluster; the run's reports plus cluster start/run seconds.

    ``workers`` / ``superexec_poll``: as
    :class:`deploy.cluster.local_cluster.LocalCluster` takes them.
    ``idle_seconds`` > 0: afterwards, the first site's idle CPU over that long (``idle_cpu``).
    """
    from deploy.cluster.local_cluster import LocalCluster

    values = {"min-sites": len(nodes), "output-dir": str(work / "runs"), **overrides}
    t0 = time.perf_counter()
    cluster = LocalCluster(REPO, nodes, work, echo_run=False, workers=workers,
                           superexec_poll=superexec_poll)
    idle = None
    with cluster:
        started = time.perf_counter() - t0
        if sampler is None:
            result = cluster.run(values)
        else:
            with sampler.watching(cluster):
                result = cluster.run(values)
        if idle_seconds > 0 and result.ok:
            time.sleep(5.0)  # the run's last ClientApps exit
            idle = idle_cpu(cluster, nodes[0].site_name, idle_seconds)
    if not result.ok:
        raise RuntimeError(f"benchmark run ended {result.status}: {result.output[-2000:]}")
    run_dir = work / "runs" / f"run-{result.run_id}"
    rounds = [json.loads(p.read_text()) for p in sorted((run_dir / "rounds").glob("*.json"))]
    return {
        "run_dir": str(run_dir),
        "cluster_start_seconds": started,
        "run_seconds": result.duration_s,
        "rounds": rounds,
        "meta": json.loads((run_dir / "run.json").read_text()),
        "idle_cpu": idle,
    }
