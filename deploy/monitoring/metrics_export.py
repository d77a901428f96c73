"""Serving ``/metrics`` from a long-lived process: the coordinator's and each site's exporter.

Flower's ServerApps and ClientApps are short-lived processes, so they do not serve metrics
themselves: they write them into a prometheus-client multiprocess folder (see
:mod:`common.metrics`), and a process that lives as long as the SuperLink (``zk0
coordinator-metrics``) or the site (``zk0 supernode``, or :class:`deploy.cluster.local_cluster.
LocalCluster` for each of its sites) serves that folder. The scrape target therefore stays
up between rounds and runs, and counters summed over every process that ever wrote them never
go down.

Besides the folder, a site's exporter reports the CPU and memory of the site's processes
(by role: ``supernode``, ``superexec``, ``clientapp``, ... found by process group) and, where
NVIDIA's management library finds a GPU, its utilisation and memory; the coordinator's probes
the SuperLink's ``/health``. Endpoints bind to loopback unless told otherwise.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from deploy.flower.health import https_ok

DEFAULT_HOST = "127.0.0.1"
COORDINATOR_PORT = 9400
SITE_PORT = 9401

_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


@dataclass(frozen=True)
class Family:
    """A metric family an exporter builds afresh at each scrape (not a prometheus-client
    metric object kept in a registry): its name, help, type and labels, defined once here so
    the manual's metrics reference lists it (``docs/gen/``) with those of
    :mod:`superlink.metrics` and :mod:`supernode.metrics`."""

    name: str
    documentation: str
    type: Literal["counter", "gauge"]
    labels: tuple[str, ...] = ()

    def build(self) -> CounterMetricFamily | GaugeMetricFamily:
        kind = CounterMetricFamily if self.type == "counter" else GaugeMetricFamily
        return kind(self.name, self.documentation, labels=list(self.labels))


PROCESS_CPU = Family(
    "zk0_local_process_cpu_seconds",
    "CPU time of the site's processes, by role (launcher, supernode, superexec, worker, "
    "clientapp)", "counter", ("site", "role"))
PROCESS_RSS = Family(
    "zk0_local_process_resident_memory_bytes",
    "Resident memory of the site's live processes, by role", "gauge", ("site", "role"))
PROCESSES = Family(
    "zk0_local_processes", "Live processes of the site, by role", "gauge", ("site", "role"))
GPU_UTILIZATION = Family(
    "zk0_local_gpu_utilization_ratio",
    "GPU busy fraction over the driver's last sample (each NVIDIA GPU, through nvidia-ml-py; "
    "no GPU, no GPU series)", "gauge", ("site", "gpu"))
GPU_MEMORY_USED = Family(
    "zk0_local_gpu_memory_used_bytes", "GPU memory in use", "gauge", ("site", "gpu"))
GPU_MEMORY_TOTAL = Family(
    "zk0_local_gpu_memory_total_bytes", "GPU memory", "gauge", ("site", "gpu"))
SUPERLINK_UP = Family(
    "zk0_superlink_up",
    "1 if the SuperLink answered /health over TLS at the last probe (every 5 s by default, "
    "zk0 coordinator-metrics --probe-interval)", "gauge")
SUPERLINK_PROBE_SECONDS = Family(
    "zk0_superlink_probe_duration_seconds", "Duration of the last /health probe", "gauge")

SITE_FAMILIES = (PROCESS_CPU, PROCESS_RSS, PROCESSES, GPU_UTILIZATION, GPU_MEMORY_USED,
                 GPU_MEMORY_TOTAL)
COORDINATOR_FAMILIES = (SUPERLINK_UP, SUPERLINK_PROBE_SECONDS)


def parse_listen(text: str, what: str = "listen address") -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) -> (host, port); port 0 picks a free one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} {text!r}: expected host:port, e.g. 127.0.0.1:{SITE_PORT}")
    return host.strip("[]"), int(port)


def prepare_multiproc_dir(path: Path, *, wipe: bool) -> Path:
    """Create the multiprocess folder (0700); with ``wipe`` remove metric files left in it.

    Wipe only while no process writes there (before the SuperExec starts): prometheus-client
    requires a clean folder per deployment, and a running writer would keep writing into an
    unlinked file.
    """
    path = Path(path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    if wipe:
        for f in path.glob("*.db"):
            f.unlink(missing_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class MultiprocFolderCollector(Collector):
    """prometheus-client's MultiProcessCollector over ``path``, after dead-process bookkeeping.

    ``live*`` gauges must disappear with their process; prometheus-client leaves calling
    ``mark_process_dead`` to whoever watches the processes. The exporter does not start the
    apps (Flower's SuperExec does), so at each scrape it marks dead every writer whose pid no
    longer runs.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        MultiProcessCollector(None, path=self.path)  # the folder exists: fail at start, not later
        self._lock = threading.Lock()  # scrapes run in parallel threads

    def reap(self) -> list[int]:
        """Mark dead every writer of ``live*`` gauge files that no longer runs; their pids."""
        with self._lock:
            dead = set()
            for name in os.listdir(self.path):
                m = _LIVE_FILE.match(name)
                if m and not _alive(int(m.group(1))):
                    dead.add(int(m.group(1)))
            for pid in dead:
                mark_process_dead(pid, self.path)
        return sorted(dead)

    def collect(self) -> Iterator[Metric]:
        self.reap()
        files = glob.glob(os.path.join(self.path, "*.db"))
        yield from MultiProcessCollector.merge(files, accumulate=True)


def _role(proc: psutil.Process, group_role: str) -> str:
    """``clientapp`` / ``serverapp`` for Flower's app processes, else the group's role."""
    with contextlib.suppress(psutil.Error):
        for part in proc.cmdline()[:3]:
            base = os.path.basename(part)
            if base in ("flwr-clientapp", "flwr-serverapp"):
                return base.removeprefix("flwr-")
    return group_role


class ProcessGroupCollector(Collector):
    """CPU seconds and resident memory of a site's processes, summed by role.

    ``groups()`` maps a role to the process group id of a process the launcher started (each
    in its own group, see :mod:`deploy.flower.processes`); Flower's SuperExec starts the
    ClientApps in its group. CPU is a counter kept here: each scrape adds what every live process
    used since the previous one, so a ClientApp that exits does not make the total drop (only the
    CPU it used after the last scrape before it exited is not seen).
    """

    def __init__(
        self, site: str, groups: Callable[[], Mapping[str, int]], *, include_self: bool = False
    ) -> None:
        self.site = site
        self.groups = groups
        self.include_self = include_self
        self._cpu: dict[str, float] = {}
        self._seen: dict[tuple[int, float], float] = {}  # (pid, create time) -> cpu seconds
        self._lock = threading.Lock()

    def _members(self) -> list[tuple[psutil.Process, str]]:
        by_group = {pgid: role for role, pgid in self.groups().items()}
        found: list[tuple[psutil.Process, str]] = []
        if self.include_self:
            found.append((psutil.Process(), "launcher"))
        for proc in psutil.process_iter():
            try:
                role = by_group.get(os.getpgid(proc.pid))
            except (ProcessLookupError, PermissionError):
                continue
            if role is not None and proc.pid != os.getpid():
                found.append((proc, _role(proc, role)))
        return found

    def collect(self) -> Iterator[Metric]:
        rss: dict[str, float] = {}
        count: dict[str, int] = {}
        with self._lock:
            seen: dict[tuple[int, float], float] = {}
            for proc, role in self._members():
                try:
                    with proc.oneshot():
                        key = (proc.pid, proc.create_time())
                        times = proc.cpu_times()
                        cpu = times.user + times.system
                        mem = proc.memory_info().rss
                except psutil.Error:
                    continue
                self._cpu[role] = self._cpu.get(role, 0.0) + max(0.0, cpu - self._seen.get(key, 0))
                seen[key] = cpu
                rss[role] = rss.get(role, 0.0) + mem
                count[role] = count.get(role, 0) + 1
            self._seen = seen
            cpu_totals = dict(self._cpu)
        cpu_family, rss_family, n_family = (f.build() for f in (PROCESS_CPU, PROCESS_RSS,
                                                                 PROCESSES))
        for role, value in sorted(cpu_totals.items()):
            cpu_family.add_metric([self.site, role], value)
        for role in sorted(rss):
            rss_family.add_metric([self.site, role], rss[role])
            n_family.add_metric([self.site, role], count[role])
        yield from (cpu_family, rss_family, n_family)


class GpuCollector(Collector):
    """Utilisation and memory of each NVIDIA GPU, through NVIDIA's management library.

    No library, no driver or no GPU: no GPU series at all (and no error), so a CPU box's
    dashboards show "no data" for GPU panels rather than zeros that look like an idle GPU.
    """

    def __init__(self, site: str) -> None:
        self.site = site
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded...
            self._handles = []

    @property
    def gpus(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml, self._handles = None, []

    def collect(self) -> Iterator[Metric]:
        if not self._handles:
            return
        nvml = self._nvml
        util, used, total = (f.build() for f in (GPU_UTILIZATION, GPU_MEMORY_USED,
                                                   GPU_MEMORY_TOTAL))
        for index, handle in enumerate(self._handles):
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # a GPU that fell off the bus: no series for it this scrape
                continue
            labels = [self.site, str(index)]
            util.add_metric(labels, rates.gpu / 100.0)
            used.add_metric(labels, float(memory.used))
            total.add_metric(labels, float(memory.total))
        yield from (util, used, total)


class SuperLinkProbe(Collector):
    """``zk0_superlink_up``: does the SuperLink answer ``/health`` over TLS?

    Probed from a background thread every ``interval`` seconds, so a slow or hung SuperLink
    never makes a scrape time out (which would turn the exporter itself "down").
    """

    def __init__(self, address: str, ca: Path, interval: float = 5.0, timeout: float = 3.0):
        self.address = address
        self.ca = Path(ca)
        self.interval = interval
        self.timeout = timeout
        self._up: bool | None = None
        self._seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="superlink-probe", daemon=True)

    def start(self) -> SuperLinkProbe:
        self.probe()
        self._thread.start()
        return self

    def probe(self) -> bool:
        start = time.perf_counter()
        up = https_ok(self.address, self.ca, timeout=self.timeout)
        self._up, self._seconds = up, time.perf_counter() - start
        return up

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.probe()

    def close(self) -> None:
        self._stop.set()

    def collect(self) -> Iterator[Metric]:
        if self._up is None:
            return
        up, seconds = SUPERLINK_UP.build(), SUPERLINK_PROBE_SECONDS.build()
        up.add_metric([], 1.0 if self._up else 0.0)
        seconds.add_metric([], self._seconds)
        yield from (up, seconds)


class MetricsServer:
    """A registry served on ``http://host:port/metrics`` from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 closers: tuple[Callable[[], None], ...] = ()) -> None:
        self.registry = registry
        self.host = host
        self._closers = closers
        self._closed = False
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for close in self._closers:
            close()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)


def serve_site(
    site: str,
    multiproc_dir: Path,
    groups: Callable[[], Mapping[str, int]],
    listen: str,
    *,
    include_self: bool = False,
) -> MetricsServer:
    """A site's exporter: its multiprocess folder, its processes by role, its GPUs."""
    host, port = parse_listen(listen, "metrics listen address")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MultiprocFolderCollector(multiproc_dir))
    registry.register(ProcessGroupCollector(site, groups, include_self=include_self))
    gpu = GpuCollector(site)
    registry.register(gpu)
    return MetricsServer(registry, host, port, closers=(gpu.close,))


def serve_coordinator(
    multiproc_dir: Path,
    listen: str,
    superlink: str | None = None,
    ca: Path | None = None,
    probe_interval: float = 5.0,
) -> MetricsServer:
    """The coordinator's exporter: the ServerApps' multiprocess folder and the SuperLink probe."""
    host, port = parse_listen(listen, "metrics listen address")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MultiprocFolderCollector(multiproc_dir))
    closers: tuple[Callable[[], None], ...] = ()
    if superlink is not None:
        if ca is None:
            raise ValueError("probing the SuperLink needs the federation CA certificate")
        probe = SuperLinkProbe(superlink, ca, interval=probe_interval).start()
        registry.register(probe)
        closers = (probe.close,)
    return MetricsServer(registry, host, port, closers=closers)
