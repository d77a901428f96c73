"""A whole federation as local processes on 127.0.0.1, with the production security settings.

Layout (every process in its own process group, stopped by PID in reverse order):

    superlink            flower-superlink  TLS, --enable-supernode-auth, --isolation process,
                                           --superexec-auth-secret-file, --database state.db;
                                           on 127.0.0.1: only this host (the operator) reaches it
    superexec-link       flower-superexec  -> SuperLink Runtime API (runs the ServerApp, which
                                           signs with the coordinator key: ZK0_COORDINATOR_KEY)
    entry-proxy          nginx             the labs' entry: /v1/fleet/* and /health -> SuperLink,
                                           403 for the rest (deploy/coordinator/entry_proxy.py)
    supernode-<site>     flower-supernode  TLS + site key -> the entry; own HTTPS runtime port;
                                           run as deploy.flower.supernode_waits (its fixed
                                           waits short or event-driven; ``waits=None``: as
                                           Flower ships it)
    worker-<site>        python -m supernode.worker: the site's executor of ClientApp tasks on
                         that runtime API (torch, policy, dataset kept loaded); restarted if it
                         dies
    superexec-<site>     flower-superexec  only with ``workers=False``, in the worker's place:
                         Flower's per-message ClientApp processes
    flwr-log             flwr log RUN --stream (only while :meth:`LocalCluster.run` is active)
    coordinator-metrics  zk0 coordinator-metrics: /metrics of the ServerApps + SuperLink probe

With ``metrics`` on (the default) each site also gets a /metrics endpoint, served from this
process as ``zk0 supernode`` serves it on a lab's box (:mod:`deploy.monitoring.metrics_export`); the
endpoints are in :attr:`LocalCluster.metrics_endpoints`.

It is the same topology a real deployment has (one SuperLink host behind its entry proxy, one
box per lab), only on one machine: tests exercise TLS, the proxy's allow-list, node
authentication, signed messages and process isolation for real. Without nginx (``proxy=None``
and none installed) the sites dial the SuperLink directly and :attr:`LocalCluster.shielded` is
False: the Control API is then as open as the port.

Working dir::

    <work_dir>/certs/            CA, SuperLink cert, site keys, SuperLink SuperExec secret
    <work_dir>/flwr-home/        FLWR_HOME of the operator side (config.toml, ServerApp FABs)
    <work_dir>/state.db          SuperLink state (SQLite)
    <work_dir>/logs/*.log        one log per process
    <work_dir>/proxy/            nginx.conf, its pid, access/error logs, temp folders (0700)
    <work_dir>/sites/<site>/     the site's FLWR_HOME, runtime TLS, SuperExec secret
    <work_dir>/metrics/          prometheus multiprocess folders: coordinator/, sites/<site>/
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from certs.federation import FederationCerts, ensure_federation_certs
from certs.keys import make_secret
from common.metrics import MULTIPROC_ENV
from common.settings import NodeConfig
from deploy.coordinator.entry_proxy import EntryProxy, ProxySettings, find_nginx
from deploy.coordinator.run_follow import RunResult, run_app
from deploy.flower import flwr_cli
from deploy.flower.commands import (
    runtime_address,
    superexec_cmd,
    superlink_cmd,
    supernode_cmd,
    worker_cmd,
)
from deploy.flower.env import SITE_SUPEREXEC_POLL_SECONDS, child_env, superexec_env
from deploy.flower.health import https_ok
from deploy.flower.logs import flower_exit_code, logged_node_id
from deploy.flower.processes import ManagedProcess, ProcessFailed
from deploy.flower.runtime_tls import RuntimeTls, ensure_runtime_tls
from deploy.flower.supernode_waits import Waits
from deploy.lab.worker_supervisor import WorkerSupervisor, stop_all
from deploy.monitoring.metrics_export import MetricsServer, prepare_multiproc_dir, serve_site


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0 and release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


REPO = Path(__file__).resolve().parents[2]


def _multiproc_env(folder: Path | None) -> dict[str, str]:
    """The apps' PROMETHEUS_MULTIPROC_DIR (inherited from their SuperExec)."""
    return {MULTIPROC_ENV: str(folder)} if folder is not None else {}


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    """True if ``GET url`` answers 200 (the metrics endpoints are plain HTTP on loopback)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _printer(prefix: str) -> Callable[[str], None]:
    def emit(line: str) -> None:
        print(f"{prefix} {line}", file=sys.stderr, flush=True)

    return emit


@dataclass
class SiteProcesses:
    """One site's processes in a :class:`LocalCluster` (with ``workers=False`` its SuperExec
    once the SuperNode is connected; the worker is in :attr:`LocalCluster.workers`)."""

    node: NodeConfig
    key: Path
    runtime_port: int
    supernode: ManagedProcess
    superexec: ManagedProcess | None = None


class LocalCluster:
    """SuperLink + its SuperExec + one SuperNode (with its site worker) per site, on 127.0.0.1.

    Use as a context manager: ``with LocalCluster(app_dir, sites, tmp) as c: c.run({...})``;
    leaving the block (also on error or Ctrl-C) stops every process by PID.
    """

    def __init__(
        self,
        app_dir: Path,
        sites: Sequence[NodeConfig],
        work_dir: Path,
        *,
        certs: FederationCerts | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        connection: str = "zk0-local",
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        echo_run: bool = True,
        proxy: bool | None = None,
        workers: bool = True,
        superexec_poll: float | None = SITE_SUPEREXEC_POLL_SECONDS,
        worker_timeout: float = 300.0,
        waits: Waits | None = Waits(),  # noqa: B008  (frozen)
        metrics: bool = True,
        metrics_port: int | None = None,
        entry_host: str | None = None,
        external_sites: bool = False,
        dial: Mapping[str, str] | None = None,
    ) -> None:
        """``proxy``: True = the labs dial an nginx entry (error if nginx is missing); False =
        they dial the SuperLink; None = the entry if nginx is installed. ``workers``: one site
        worker per site (the default; False: Flower's plain per-message ClientApps through its
        SuperExec). ``superexec_poll``: those SuperExecs' task poll interval in seconds (None:
        Flower's 1 s). ``worker_timeout``: how long a worker may take to load torch and
        LeRobot at start (minutes on a busy 2-core machine). ``waits``: the SuperNodes' waits
        (:mod:`deploy.flower.supernode_waits`; None: Flower's SuperNode as shipped).
        ``metrics_port``: the coordinator's /metrics port, sites on the next ones (site i on
        ``metrics_port + 1 + i``); None: free ports. ``entry_host``: the address the entry
        listens on (default ``host``; also in the SuperLink certificate). ``external_sites``:
        register the sites' keys but start no site process: the sites run elsewhere (another
        network namespace, a container) and dial :attr:`site_address`. ``dial``: site name ->
        the address its SuperNode dials instead of :attr:`site_address` (tests put a relay in
        between)."""
        names = [s.site_name for s in sites]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate site names: {names}")
        self.app_dir = Path(app_dir).resolve()
        self.sites = list(sites)
        self.work_dir = Path(work_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.connection = connection
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.echo_run = echo_run
        self._certs = certs
        self.flwr_home = self.work_dir / "flwr-home"
        self.logs = self.work_dir / "logs"
        self.node_ids: dict[str, int] = {}
        self.processes: list[ManagedProcess] = []  # start order; stopped in reverse
        self._site_procs: dict[str, SiteProcesses] = {}
        self._run_proc: ManagedProcess | None = None
        self.use_proxy = find_nginx() is not None if proxy is None else proxy
        self.entry: EntryProxy | None = None
        self.use_workers = workers
        self.superexec_poll = superexec_poll
        self.worker_timeout = worker_timeout
        self.waits = waits
        self.entry_host = entry_host or host
        self.external_sites = external_sites
        self.workers: dict[str, WorkerSupervisor] = {}
        self._runtime: dict[str, tuple[int, RuntimeTls, Path]] = {}
        self.metrics = metrics
        self.metrics_dir = self.work_dir / "metrics"
        self._metrics_port = metrics_port
        self.coordinator_metrics = f"{host}:{metrics_port or free_port(host)}" if metrics else None
        self._site_exporters: dict[str, MetricsServer] = {}
        self.dial = dict(dial or {})

    # -- properties --------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The SuperLink itself (all APIs): the operator's ``flwr`` CLI, never the labs."""
        return runtime_address(self.host, self.port)

    @property
    def shielded(self) -> bool:
        """True once the labs' entry proxy runs (the SuperLink is then loopback-only)."""
        return self.entry is not None

    @property
    def site_address(self) -> str:
        """What the labs dial: the entry proxy, or the SuperLink itself when unshielded."""
        return self.entry.address if self.entry is not None else self.address

    @property
    def certs(self) -> FederationCerts:
        """The federation's files (made in ``<work_dir>/certs`` unless given; kept on restart)."""
        if self._certs is None:
            self._certs = ensure_federation_certs(
                self.work_dir / "certs",
                sans=list(dict.fromkeys(["127.0.0.1", "localhost", self.entry_host])),
                sites=[s.site_name for s in self.sites],
            )
        return self._certs

    @property
    def metrics_endpoints(self) -> dict[str, Any]:
        """Where the metrics are served: ``{"coordinator": host:port, "sites": {name: ...}}``."""
        return {
            "coordinator": self.coordinator_metrics,
            "sites": {name: e.address for name, e in self._site_exporters.items()},
        }

    def all_pids(self) -> list[int]:
        """Every PID this cluster ever started (for leak checks)."""
        workers = [p for w in self.workers.values() for p in w.incarnations]
        return [p.pid for p in [*self.processes, *workers] if p.started]

    def alive_pids(self) -> list[int]:
        """PIDs (incl. process-group members such as ClientApps) still running."""
        pids = {pid for p in self.processes for pid in p.alive_pids()}
        pids.update(pid for w in self.workers.values() for pid in w.alive_pids())
        return sorted(pids)

    # -- start -------------------------------------------------------------------------------

    def _spawn(
        self, name: str, cmd: list[str], flwr_home: Path, env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        """``env``: the child's whole environment (default :func:`child_env` of ``flwr_home``)."""
        proc = ManagedProcess(
            name, cmd, self.logs / f"{name}.log", env=dict(env) if env else child_env(flwr_home),
            cwd=self.work_dir,
        )
        self.processes.append(proc)
        return proc.start()

    def start(self) -> Self:
        """SuperLink healthy, its SuperExec up, site keys registered, every SuperNode online.

        SuperNodes are spawned together and then awaited (each start is a ~2 s Python import on
        a small machine). Safe on an existing work dir: state.db keeps runs and registrations.
        With ``external_sites`` only the coordinator's side starts and the keys are registered.
        """
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            local = [] if self.external_sites else self.sites
            for node in local:  # they load torch while the rest starts
                self.start_worker(node.site_name)
            self._start_superlink()
            if self.use_proxy:
                self._start_proxy()
            for node in self.sites:
                self.register(node.site_name, self.certs.site_keys[node.site_name][1])
            spawned = [
                self.start_supernode(node, self.certs.site_keys[node.site_name][0])
                for node in local
            ]
            for site in spawned:
                self._finish_site(site)
            if local:
                self.wait_online(list(self.node_ids.values()), self.startup_timeout)
            self.wait_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_superlink(self) -> None:
        c = self.certs
        self.work_dir.mkdir(parents=True, exist_ok=True)
        link = self._spawn(
            "superlink",
            superlink_cmd(
                certfile=c.server_cert,
                keyfile=c.server_key,
                ca_certfile=c.ca_cert,
                secret_file=c.superexec_secret,
                database=self.work_dir / "state.db",
                host=self.host,
                port=self.port,
            ),
            self.flwr_home,
        )
        link.wait_healthy(
            lambda: https_ok(self.address, c.ca_cert),
            self.startup_timeout,
            what=f"answering https://{self.address}/health",
        )
        coordinator_dir = self._start_coordinator_metrics()
        exec_link = self._spawn(
            "superexec-link",
            superexec_cmd(self.address, c.ca_cert, c.superexec_secret),
            self.flwr_home,
            # the ServerApp signs every instruction with it (superlink.authenticity): a path
            child_env(self.flwr_home, {"ZK0_COORDINATOR_KEY": str(c.coordinator_key.resolve()),
                                       **_multiproc_env(coordinator_dir)}),
        )
        time.sleep(0.5)
        if exec_link.returncode is not None:
            raise ProcessFailed(f"superexec-link exited at once:\n{exec_link.log_tail()}")
        flwr_cli.write_connection_config(self.flwr_home, self.connection, self.address, c.ca_cert)

    def _start_proxy(self) -> None:
        """nginx on its own port, re-encrypting to the SuperLink (verified as ``localhost``)."""
        c = self.certs
        entry = EntryProxy(ProxySettings(
            listen=runtime_address(self.entry_host, free_port(self.entry_host)),
            superlink=self.address,
            cert=c.server_cert,
            key=c.server_key,
            ca=c.ca_cert,
            folder=self.work_dir / "proxy",
        ))
        try:
            proc = entry.start(self.logs / "entry-proxy.log", self.startup_timeout)
        except BaseException:
            entry.stop(self.stop_timeout)
            raise
        self.processes.append(proc)
        self.entry = entry

    def _start_coordinator_metrics(self) -> Path | None:
        """``zk0 coordinator-metrics`` on a fresh folder, before any ServerApp can write to it."""
        if self.coordinator_metrics is None:
            return None
        folder = prepare_multiproc_dir(self.metrics_dir / "coordinator", wipe=True)
        cmd = [
            sys.executable, "-m", "deploy.cli", "coordinator-metrics",
            "--multiproc-dir", str(folder), "--listen", self.coordinator_metrics,
            "--superlink", self.address, "--ca-cert", str(self.certs.ca_cert),
        ]  # fmt: skip
        # this checkout's zk0, whatever is installed
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        proc = self._spawn("coordinator-metrics", cmd, self.flwr_home,
                           child_env(self.flwr_home, {"PYTHONPATH": path}))
        proc.wait_healthy(
            lambda: _http_ok(f"http://{self.coordinator_metrics}/metrics"),
            self.startup_timeout,
            what=f"serving http://{self.coordinator_metrics}/metrics",
        )
        return folder

    def _serve_site_metrics(self, name: str) -> Path | None:
        """The site's multiprocess folder, and its /metrics (once per site: a site that
        rejoins keeps its endpoint and counters)."""
        if not self.metrics:
            return None
        folder = self.metrics_dir / "sites" / name
        if name in self._site_exporters:
            return folder
        prepare_multiproc_dir(folder, wipe=True)
        index = next(i for i, s in enumerate(self.sites) if s.site_name == name)
        port = self._metrics_port + 1 + index if self._metrics_port else free_port(self.host)

        def groups() -> dict[str, int]:
            site = self._site_procs.get(name)
            procs = {"supernode": site.supernode, "superexec": site.superexec} if site else {}
            roles = {role: p.pid for role, p in procs.items() if p is not None and p.started}
            worker = self.workers.get(name)
            if worker is not None and worker.pid is not None:
                roles["worker"] = worker.pid
            return roles

        self._site_exporters[name] = serve_site(name, folder, groups, f"{self.host}:{port}")
        return folder

    def register(self, site: str, pubkey: Path) -> int | None:
        """Register a site's public key; None if this database already has it (a restart).

        flwr 1.42 answers "[code: 23] Public key already in use" for a known key and its node
        list shows neither names nor keys, so the id then comes from the SuperNode's log
        (:mod:`deploy.flower.logs`).
        """
        try:
            node_id = flwr_cli.register_supernode(self.flwr_home, self.connection, pubkey, site)
        except flwr_cli.FlwrCliError as err:
            if "already in use" not in str(err):
                raise
            return None
        self.node_ids[site] = node_id
        return node_id

    def start_site(self, node: NodeConfig) -> None:
        """Register the site's key (if not yet) and start its SuperNode and SuperExec.

        Also adds a site to a running cluster, if :attr:`certs` has a key for it.
        """
        if node.site_name not in self.certs.site_keys:
            raise KeyError(f"no key for site {node.site_name!r} in {self.certs.ca_cert.parent}")
        if all(s.site_name != node.site_name for s in self.sites):
            self.sites.append(node)
        priv, pub = self.certs.site_keys[node.site_name]
        self.register(node.site_name, pub)
        self.start_worker(node.site_name)
        self._finish_site(self.start_supernode(node, key=priv))
        self.wait_online([self.node_ids[node.site_name]], self.startup_timeout)
        self.wait_workers([node.site_name])

    # -- site workers ------------------------------------------------------------------------

    def site_runtime(self, site: str) -> tuple[str, RuntimeTls, Path]:
        """The site's runtime API address, its TLS files and its SuperExec secret: made once
        (the port too), so the worker can start before its SuperNode and a restarted
        SuperNode serves where the worker looks."""
        if site not in self._runtime:
            site_dir = self._site_dir(site)
            secret = make_secret(site_dir / "superexec.secret", keep_existing=True)
            tls = ensure_runtime_tls(site_dir / "runtime-tls")
            self._runtime[site] = (free_port(self.host), tls, secret)
        port, tls, secret = self._runtime[site]
        return runtime_address(self.host, port), tls, secret

    def start_worker(self, site: str) -> WorkerSupervisor | None:
        """Start (once) the site's worker and the supervisor that restarts it if it dies."""
        if not self.use_workers or site in self.workers:
            return self.workers.get(site)
        runtime, tls, secret = self.site_runtime(site)
        supervisor = WorkerSupervisor(
            f"worker-{site}", worker_cmd(runtime, tls.ca, secret, parent_pid=os.getpid()),
            self.logs / f"worker-{site}.log",
            env=child_env(self._site_dir(site) / "flwr-home",
                          _multiproc_env(self._serve_site_metrics(site))),
            cwd=self.work_dir, on_restart=_printer("[zk0]"),
        )  # fmt: skip
        self.workers[site] = supervisor.start()
        return supervisor

    def wait_workers(self, sites: Sequence[str] | None = None) -> None:
        """Block until the workers of ``sites`` (default: all) are ready to take messages."""
        for site in sites or list(self.workers):
            if site in self.workers:
                self.workers[site].wait_ready(self.worker_timeout)

    def _finish_site(self, site: SiteProcesses) -> None:
        """Wait until the SuperNode is connected (logs its id) and serves its runtime API over
        TLS; then, without workers, start the site's SuperExec."""
        name = site.node.site_name
        site_dir = self._site_dir(name)
        runtime = runtime_address(self.host, site.runtime_port)
        ca = RuntimeTls.in_dir(site_dir / "runtime-tls").ca
        site.supernode.wait_healthy(
            lambda: (
                logged_node_id(site.supernode) is not None and https_ok(runtime, ca)
            ),
            self.startup_timeout,
            what="connected to the SuperLink and serving its runtime API",
        )
        node_id = logged_node_id(site.supernode)
        if node_id is None:  # wait_healthy saw it; only a truncated log could get here
            raise ProcessFailed(f"supernode-{name}: no 'SuperNode ID' in {site.supernode.log_path}")
        if self.node_ids.setdefault(name, node_id) != node_id:
            raise ProcessFailed(
                f"supernode-{name} got node id {node_id}, registered as {self.node_ids[name]}"
            )
        if self.use_workers:
            return
        site.superexec = self._spawn(
            f"superexec-{name}",
            superexec_cmd(runtime, ca, site_dir / "superexec.secret"),
            site_dir / "flwr-home",
            {**superexec_env(site_dir / "flwr-home", self.superexec_poll),
             **_multiproc_env(self._serve_site_metrics(name))},
        )

    def _site_dir(self, site: str) -> Path:
        """The site's folder, 0700 whoever made it first (it holds the SuperExec secret and
        the runtime TLS key)."""
        path = self.work_dir / "sites" / site
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
        return path

    def start_supernode(
        self,
        node: NodeConfig,
        key: Path,
        *,
        root_certificates: Path | None = None,
        name: str | None = None,
        max_retries: int | None = None,
        superlink: str | None = None,
    ) -> SiteProcesses:
        """Start only a SuperNode (no SuperExec, no waiting): tests use it to see refusals.

        ``key`` may be unregistered (-> exit 305) and ``root_certificates`` another CA
        (-> exit 305, certificate verify failed); ``superlink`` overrides the address it dials
        (default :attr:`site_address`). Returns the site record; its ``supernode`` is a
        :class:`ManagedProcess` owned (and stopped) by the cluster.
        """
        runtime, tls, secret = self.site_runtime(name or node.site_name)
        port = int(runtime.rsplit(":", 1)[1])
        node = self.signing_config(node, key)
        proc = self._spawn(
            f"supernode-{name or node.site_name}",
            supernode_cmd(
                superlink=superlink or self.dial.get(node.site_name) or self.site_address,
                root_certificates=root_certificates or self.certs.ca_cert,
                private_key=key,
                node_config=node,
                runtime_port=port,
                runtime_tls=tls,
                secret_file=secret,
                runtime_host=self.host,
                max_retries=max_retries,
                waits=self.waits,
            ),
            self._site_dir(name or node.site_name) / "flwr-home",
        )
        site = SiteProcesses(node=node, key=key, runtime_port=port, supernode=proc)
        if name is None:
            self._site_procs[node.site_name] = site
        return site

    def signing_config(self, node: NodeConfig, key: Path) -> NodeConfig:
        """``node`` with the paths its ClientApp signs and verifies with (as ``zk0 supernode``
        sets them): the SuperNode's own key and the coordinator's public key."""
        return node.model_copy(update={
            "site_key": node.site_key or str(Path(key).resolve()),
            "coordinator_pubkey": node.coordinator_pubkey
            or str(self.certs.coordinator_pub.resolve()),
        })

    def wait_online(self, node_ids: Sequence[int], timeout: float) -> None:
        """Block until ``flwr supernode list`` shows every node id ``online``."""
        wanted = {str(n) for n in node_ids}
        deadline = time.monotonic() + timeout
        online: set[str] = set()
        while time.monotonic() < deadline:
            for site in self._site_procs.values():
                if site.supernode.returncode is not None:
                    raise ProcessFailed(
                        f"supernode-{site.node.site_name} exited (Flower code "
                        f"{flower_exit_code(site.supernode)}):\n{site.supernode.log_tail()}"
                    )
            nodes = flwr_cli.list_supernodes(self.flwr_home, self.connection)
            online = {n["node-id"] for n in nodes if n.get("status") == "online"}
            if wanted <= online:
                return
            time.sleep(0.5)
        raise ProcessFailed(f"SuperNodes {sorted(wanted - online)} not online after {timeout} s")

    # -- run ---------------------------------------------------------------------------------

    def run(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        app_dir: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> RunResult:
        """Submit the app (``flwr run --format json``), follow its log with a ``[run]`` prefix.

        ``on_line`` also gets every line of the run's log as it arrives (e.g. to act when a
        round starts).

        Waits for the run to end (its status in ``flwr ls``: the log stream may end earlier), or
        at most ``timeout`` s: then ``flwr stop`` and the stream is stopped
        (:func:`deploy.coordinator.run_follow.run_app`).
        A run that cannot even start raises :class:`deploy.flower.flwr_cli.FlwrCliError`.
        """
        echo = _printer("[run]") if self.echo_run else None

        def sink(line: str) -> None:
            if echo:
                echo(line)
            if on_line:
                on_line(line)

        def follow(proc: ManagedProcess | None) -> None:
            if proc is not None:
                self.processes.append(proc)
            self._run_proc = proc

        return run_app(
            self.flwr_home, self.connection, app_dir or self.app_dir, overrides, self.logs,
            timeout=timeout, on_line=sink, on_follow=follow, stop_timeout=self.stop_timeout,
        )

    # -- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything by PID, newest first; the ``flwr log`` stream always goes first.

        A SuperLink with a streaming client attached can hang on SIGTERM, hence the order
        and :meth:`ManagedProcess.stop`'s SIGKILL fallback.
        """
        if self._run_proc is not None:
            self._run_proc.stop(self.stop_timeout)
        stop_all(list(self.workers.values()), self.stop_timeout)
        for proc in reversed(self.processes):
            proc.stop(self.stop_timeout)
        for exporter in self._site_exporters.values():
            exporter.close()
        self._site_exporters.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
