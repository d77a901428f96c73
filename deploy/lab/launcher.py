"""What a lab operator runs on its GPU box: this site's SuperNode and its site worker.

Settings come from flags, else ``ZK0_*`` environment variables, else a ``.env`` file (see
:class:`SiteSettings`). ``--superlink`` is the federation's entry (the coordinator's reverse
proxy, which forwards only the Fleet API), not the SuperLink's own port. Everything is checked
before any process starts, and each refusal names the setting, the file or value, and what was
expected: a wrong path or key otherwise shows up only as an opaque exit code (305) or a TLS
error in a Flower log.

Process layout (each in its own process group, stopped by PID on SIGTERM/SIGINT/SIGHUP)::

    python -m deploy.flower.supernode_waits --pull-min-seconds S --pull-max-seconds S
                      --acquire-hold-seconds S ...  (Flower's flower-supernode, its message
                      path's fixed waits made short or event-driven)
                      --superlink ENTRY:P --root-certificates ca.crt --auth-supernode-private-key K
                      --node-config '... site-key="K" coordinator-pubkey="coordinator.pub"'
                      --isolation process --host 127.0.0.1 --port 9094
                      --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile (local runtime TLS)
                      --superexec-auth-secret-file <work>/superexec.secret
    python -m supernode.worker --runtime-api-address 127.0.0.1:9094
                      --root-certificates <runtime CA> --superexec-auth-secret-file <secret>
                      the site's executor of ClientApp tasks: takes each message from the
                      SuperNode and runs it in its own process, where torch, LeRobot, the
                      policy and the dataset stay loaded; restarted if it dies
    flower-superexec  (only with --no-worker, in the worker's place) --runtime-api-address ...
                      (env FLWR_SUPEREXEC_TASK_POLL_INTERVAL=<superexec-poll>): Flower's own,
                      a new ``flwr-clientapp`` process per message

Why the local runtime API uses TLS and a secret: see :mod:`deploy.flower.runtime_tls` and
:mod:`deploy.flower.commands`. The node config carries two *paths* for end-to-end signing
(:mod:`supernode.authenticity`): the site key (the ClientApp signs every reply with it) and the
coordinator's public key (every instruction must carry its signature), by default
``coordinator.pub`` next to ``ca.crt``.

Metrics: the launcher serves the site's Prometheus endpoint (``--metrics-listen``, default
127.0.0.1:9401; ``off`` disables it): what the site's ClientApps recorded in the multiprocess
folder ``--metrics-dir`` (set as ``PROMETHEUS_MULTIPROC_DIR`` for the children, wiped at start),
the CPU and memory of the site's processes, and its GPUs (see
:mod:`deploy.monitoring.metrics_export`).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import shlex
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from certs.checks import check_ca, check_site_key
from certs.keys import make_secret
from certs.names import HOST_RULE, is_host_name
from common import signing
from common.metrics import MULTIPROC_ENV
from common.settings import NodeConfig, SettingsError
from deploy.flower.commands import (
    runtime_address,
    superexec_cmd,
    supernode_cmd,
    worker_cmd,
)
from deploy.flower.env import SITE_SUPEREXEC_POLL_SECONDS, child_env, superexec_env
from deploy.flower.health import https_ok
from deploy.flower.logs import (
    EXIT_SUPERNODE_CONNECTION_ERROR,
    flower_exit_code,
    logged_node_id,
    strip_ansi,
)
from deploy.flower.processes import ManagedProcess, ProcessFailed
from deploy.flower.runtime_tls import RuntimeTls, ensure_runtime_tls
from deploy.flower.supernode_waits import Waits
from deploy.lab import rejoin
from deploy.lab.worker_supervisor import WorkerSupervisor
from deploy.monitoring.metrics_export import (
    SITE_PORT,
    parse_listen,
    prepare_multiproc_dir,
    serve_site,
)

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")

EXIT_CONFIG_ERROR = 2


def _abs(path: Path) -> Path:
    return Path(path).expanduser().resolve()


class SiteConfigError(ValueError):
    """The site cannot start as configured; one line per problem, each naming the setting."""


class SiteSettings(BaseSettings):
    """One lab's settings: flags > ``ZK0_<NAME>`` env vars > ``.env`` file > defaults.

    Each field's ``description`` is both its ``zk0 supernode`` flag's help and its line in the
    manual's reference (generated from this model).
    """

    model_config = SettingsConfigDict(
        env_prefix="ZK0_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    superlink: str = Field(
        description="The federation's entry host:port (the coordinator's reverse proxy), no "
        "scheme; not the SuperLink's own port")
    ca_cert: Path = Field(
        description="The federation CA certificate (PEM); verifies the entry")
    coordinator_pub: Path | None = Field(
        None, description="The coordinator's public key (default: coordinator.pub next to the "
        "CA certificate)")
    site_key: Path = Field(
        description="This site's OpenSSH EC private key, registered by the coordinator (0600)")
    site_name: str = Field(description="This site's name, as the coordinator registered it")
    dataset_root: str = Field("", description="Local LeRobotDataset folder")
    dataset_repo_id: str = Field(
        "", description="Dataset repo id on the Hub, when there is no local dataset root")
    eval_episodes: int = Field(2, description="Whole episodes held out for evaluation")
    device: str = Field(
        "auto", description="Torch device: auto (cuda when available, else mps, else cpu), cpu, "
        "cuda, cuda:N or mps")
    split_seed: int | None = Field(
        None, description="Seed of the train/held-out episode split (default: the node "
        "config's)")
    num_workers: int | None = Field(
        None, description="DataLoader worker processes (default: the node config's)")
    torch_threads: int | None = Field(
        None, description="Torch CPU threads (0 = all cores; default: the node config's)")
    share_trajectories: bool | None = Field(
        None, description="true or false: send one held-out episode's recorded and predicted "
        "actions to the SuperLink for the per-joint plots (false: the site plots them itself; "
        "default: the node config's, true)")
    runtime_host: str = Field(
        "127.0.0.1", description="Host of this SuperNode's local runtime API")
    runtime_port: int = Field(
        9094, ge=1, le=65535,
        description="Port of this SuperNode's local runtime API (distinct per SuperNode on a "
        "box)")
    superexec_secret_file: Path | None = Field(
        None, description="The SuperExec's secret file, created 0600 if missing (default: "
        "WORK_DIR/superexec.secret)")
    work_dir: Path = Field(
        Path(".zk0/site"),
        description="Logs, runtime TLS, SuperExec secret, FLWR_HOME and the site's "
        "state")
    startup_timeout: float = Field(
        60.0, description="Seconds the SuperNode may take to serve its runtime API (no flag: "
        "environment or .env only)")
    expect: str = Field(
        "so100", description="What the federation expects of this site's data: so100, none, "
        "or a features JSON the coordinator publishes (zk0 check-dataset --write-expectation)")
    deep_check: bool = Field(
        False, description="Decode every video frame before starting (--check always does)")
    worker: bool = Field(True, description=(
        "Run the site worker as this site's executor of ClientApp tasks (torch, LeRobot, the "
        "policy and the dataset stay loaded); false (--no-worker): Flower's flower-superexec, "
        "a new process per message"))
    superexec_poll: float = Field(
        SITE_SUPEREXEC_POLL_SECONDS, ge=0.01, le=60.0,
        description="Seconds between flower-superexec's task polls, only with --no-worker "
        "(Flower's default is 1.0; sets FLWR_SUPEREXEC_TASK_POLL_INTERVAL)")
    pull_min_seconds: float = Field(Waits.pull_min, gt=0, le=60, description=(
        "The SuperNode's wait after a pull from the entry that found no message; it grows "
        "1.25x per empty pull up to pull-max-seconds and starts over after each message"))
    pull_max_seconds: float = Field(Waits.pull_max, gt=0, le=60, description=(
        "The longest wait between two pulls of an idle SuperNode (Flower's fixed wait: 3 s)"))
    acquire_hold_seconds: float = Field(Waits.acquire_hold, ge=0, le=300, description=(
        "How long the SuperNode holds the worker's request for a task before answering "
        "'none yet' (a message is handed over the moment it is stored)"))
    peer_timeout: float = Field(60.0, gt=0, lt=3600, description=(
        "Seconds the site worker waits for any answer of its SuperNode before counting it "
        "as stalled (the held task request gets acquire-hold-seconds on top)"))
    metrics_listen: str = Field(
        f"127.0.0.1:{SITE_PORT}",
        description="host:port of this site's Prometheus /metrics, or off")
    metrics_dir: Path | None = Field(
        None, description="Prometheus multiprocess folder, wiped at start (default: "
        "WORK_DIR/metrics)")

    # Absolute paths: the children run with the work dir as cwd.
    @property
    def work_path(self) -> Path:
        return _abs(self.work_dir)

    @property
    def secret_path(self) -> Path:
        return _abs(self.superexec_secret_file or self.work_dir / "superexec.secret")

    @property
    def coordinator_pub_path(self) -> Path:
        return _abs(self.coordinator_pub or Path(self.ca_cert).expanduser().parent
                    / "coordinator.pub")

    @model_validator(mode="after")
    def _pull_waits_in_order(self) -> SiteSettings:
        if self.pull_min_seconds > self.pull_max_seconds:
            raise ValueError(f"pull-min-seconds ({self.pull_min_seconds}) is larger than "
                             f"pull-max-seconds ({self.pull_max_seconds})")
        return self

    @property
    def waits(self) -> Waits:
        """The SuperNode's waits (:mod:`deploy.flower.supernode_waits`)."""
        return Waits(self.pull_min_seconds, self.pull_max_seconds, self.acquire_hold_seconds)

    @property
    def metrics_on(self) -> bool:
        return self.metrics_listen.strip().lower() not in ("", "off")

    @property
    def metrics_path(self) -> Path:
        return _abs(self.metrics_dir or self.work_dir / "metrics")

    @property
    def runtime_tls_dir(self) -> Path:
        return self.work_path / "runtime-tls"

    @property
    def runtime_connect_host(self) -> str:
        """Where the SuperExec dials the runtime API (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.runtime_host in _WILDCARD_HOSTS else self.runtime_host

    def node_config(self) -> NodeConfig:
        values: dict[str, Any] = {
            "site-name": self.site_name,
            "dataset-root": self.dataset_root,
            "dataset-repo-id": self.dataset_repo_id,
            "eval-episodes": self.eval_episodes,
            "device": self.device,
            "split-seed": self.split_seed,
            "num-workers": self.num_workers,
            "torch-threads": self.torch_threads,
            "share-trajectories": self.share_trajectories,
            # the site's per-run state (optimizer moments) stays in its work dir
            "state-dir": str((self.work_dir / "state").expanduser().resolve()),
            # paths only: the ClientApp signs with the key, verifies with the coordinator's
            "site-key": str(_abs(self.site_key)),
            "coordinator-pubkey": str(self.coordinator_pub_path),
        }
        return NodeConfig.parse({k: v for k, v in values.items() if v is not None}, "site settings")


# -- checks ------------------------------------------------------------------------------------


def parse_superlink_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ValueError says what is wrong."""
    expected = "expected host:port without scheme, e.g. superlink.example.org:8000"
    text = address.strip()
    if "://" in text or "/" in text:
        raise ValueError(f"superlink address {address!r}: {expected}")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"superlink address {address!r}: {expected}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"superlink address {address!r}: bad IPv6 literal {host!r}") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"superlink address {address!r}: no port; {expected}")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not is_host_name(host):
                raise ValueError(
                    f"superlink address {address!r}: {host!r} is not a valid host name "
                    f"({HOST_RULE}) or IP; {expected}"
                ) from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"superlink address {address!r}: port {port!r} is not 1-65535")
    return host, int(port)


def _check_secret_file(path: Path) -> str | None:
    if not path.exists():
        return None  # generated at start
    if not path.is_file():
        return f"superexec secret file {path} (ZK0_SUPEREXEC_SECRET_FILE): not a regular file"
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return (
            f"superexec secret file {path} (ZK0_SUPEREXEC_SECRET_FILE): mode {mode:04o}, "
            f"expected 0600 (run: chmod 600 {path})"
        )
    if path.stat().st_size == 0:
        return f"superexec secret file {path} (ZK0_SUPEREXEC_SECRET_FILE): empty"
    return None


def coordinator_pub_problem(path: Path, where: str) -> str | None:
    """Why ``path`` is not the coordinator's public key (None if it is); ``where`` names the
    setting (the launcher's and ``zk0 site-container``'s flags differ)."""
    try:
        signing.load_public_key(path, "coordinator public key")
    except signing.KeyFileError as err:
        return f"{where}: {err} (the coordinator ships coordinator.pub with ca.crt)"
    return None


def validation_problems(err: ValidationError) -> str:
    """A settings ValidationError as one line per field, naming its flag and variable."""
    lines = []
    for item in err.errors():
        if not item["loc"]:  # a rule between settings: its message names them
            lines.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        name = str(item["loc"][0])
        lines.append(f"--{name.replace('_', '-')} / ZK0_{name.upper()}: {item['msg']}")
    return "\n".join(lines)


def check_settings(
    settings: SiteSettings,
    *,
    dataset: bool = True,
    deep: bool = False,
    warn: Callable[[str], object] | None = None,
) -> NodeConfig:
    """Every check that can fail before start; raises :class:`SiteConfigError` listing all.

    The dataset check (:mod:`supernode.dataset_checks`) decodes every frame with ``deep`` or
    ``settings.deep_check``; its warnings (what training survives and will skip) go to
    ``warn`` (default: stderr).
    """
    problems: list[str] = []
    try:
        parse_superlink_address(settings.superlink)
    except ValueError as err:
        problems.append(f"ZK0_SUPERLINK / --superlink: {err}")
    try:
        check_ca(settings.ca_cert.expanduser())
    except ValueError as err:
        problems.append(f"ZK0_CA_CERT / --ca-cert: {err}")
    try:
        check_site_key(settings.site_key.expanduser())
    except ValueError as err:
        problems.append(f"ZK0_SITE_KEY / --site-key: {err}")
    if (pub_problem := coordinator_pub_problem(
            settings.coordinator_pub_path, "ZK0_COORDINATOR_PUB / --coordinator-pub")) is not None:
        problems.append(pub_problem)
    if (secret_problem := _check_secret_file(settings.secret_path)) is not None:
        problems.append(secret_problem)
    if settings.metrics_on:
        try:
            parse_listen(settings.metrics_listen)
        except ValueError as err:
            problems.append(f"ZK0_METRICS_LISTEN / --metrics-listen: {err} (or 'off')")
    node: NodeConfig | None = None
    try:
        node = settings.node_config()
    except SettingsError as err:
        problems.extend(str(err).splitlines())
    if node is not None and dataset:
        from supernode.dataset_checks.expectation import resolve_expectation
        from supernode.preflight import SiteCheckError, check_site  # loads the ML stack

        try:
            expect = resolve_expectation(settings.expect)
            summary = check_site(node, expect, deep=deep or settings.deep_check)
            for line in summary.warnings:
                (warn or _stderr)(f"zk0 supernode: {line}")
        except SiteCheckError as err:
            problems.extend(str(err).splitlines())
        except ValueError as err:  # an unreadable expectation file
            problems.append(f"ZK0_EXPECT / --expect: {err}")
    if problems or node is None:
        raise SiteConfigError("\n".join(problems))
    return node


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------------


def build_site_processes(settings: SiteSettings) -> list[list[str]]:
    """``[supernode_cmd, executor_cmd]`` for this site (pure: paths only, nothing created); the
    executor is the site worker, or with ``--no-worker`` Flower's ``flower-superexec``."""
    tls = RuntimeTls.in_dir(settings.runtime_tls_dir)
    node = settings.node_config()
    supernode = supernode_cmd(
        superlink=settings.superlink,
        root_certificates=_abs(settings.ca_cert),
        private_key=_abs(settings.site_key),
        node_config=node,
        runtime_port=settings.runtime_port,
        runtime_tls=tls,
        secret_file=settings.secret_path,
        runtime_host=settings.runtime_host,
        waits=settings.waits,
    )
    runtime = runtime_address(settings.runtime_connect_host, settings.runtime_port)
    if settings.worker:
        return [supernode, worker_cmd(
            runtime, tls.ca, settings.secret_path, peer_timeout=settings.peer_timeout,
            acquire_timeout=settings.acquire_hold_seconds + settings.peer_timeout)]
    return [supernode, superexec_cmd(runtime, tls.ca, settings.secret_path)]


def _explain_exit(proc: ManagedProcess, since: int = 0) -> str:
    """Why a SuperNode or SuperExec exited, in a lab operator's terms."""
    code = flower_exit_code(proc)
    name = proc.name
    text = proc.log_text(since)
    if code == EXIT_SUPERNODE_CONNECTION_ERROR and "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"{name} exited (Flower code {code}): TLS verification failed. The CA (--ca-cert / "
            "ZK0_CA_CERT) did not sign the SuperLink's certificate, or the certificate does "
            "not name the address dialled. See the log above."
        )
    if code == EXIT_SUPERNODE_CONNECTION_ERROR and rejoin.refused_activation(text):
        return (
            f"{name} exited (Flower code {code}): the SuperLink refused to activate this "
            "SuperNode ([code: 2004]). Usual cause: this site's public key is not registered "
            "(the operator runs `flwr supernode register <site>.pub`). Also possible: another "
            "SuperNode with this key is running, or one stopped without deactivating less "
            f"than {rejoin.NODE_EXPIRY_S} s ago and still counts as online (start again in a "
            "minute)."
        )
    if code == EXIT_SUPERNODE_CONNECTION_ERROR:
        return (
            f"{name} exited (Flower code {code}): the SuperLink refused this SuperNode or could "
            "not be reached. Usual "
            "causes: this site's public key is not registered or was revoked (the coordinator "
            "runs `zk0 site register <site>.pub --name <site>`), the CA does not match the "
            "entry's certificate, or the address is wrong. See the log above."
        )
    return f"{name} exited (code {code}); see the log above and {proc.log_path}."


def prepare_site(settings: SiteSettings) -> list[list[str]]:
    """Create what the site's processes need, then return :func:`build_site_processes`.

    The SuperExec secret first (0600; its folder, by default the work dir, created 0700), then
    the runtime API's TLS files (0700 folder inside the work dir). Both are kept when they
    exist: a restarted site reuses them.
    """
    make_secret(settings.secret_path, keep_existing=True)
    ensure_runtime_tls(
        settings.runtime_tls_dir, hosts=_runtime_hosts(settings.runtime_connect_host)
    )
    return build_site_processes(settings)


def run_site(settings: SiteSettings, *, echo: bool = True) -> int:
    """Check, then run the SuperNode and the site worker (or, with ``--no-worker``, Flower's
    SuperExec) until a signal or until the SuperNode (or that SuperExec) exits.

    SIGTERM/SIGINT/SIGHUP stop them all (the executor first, then the SuperNode; SIGKILL after
    a timeout) and return 0; the SuperNode exiting on its own stops the rest and returns its
    code. A worker that exits is started again (:class:`WorkerSupervisor`).
    A restart refused because this site's previous node still counts as online is retried
    with backoff until that node expires (:mod:`deploy.lab.rejoin`).
    """
    check_settings(settings)
    work = settings.work_path
    node_cmd, exec_cmd = prepare_site(settings)
    extra_env = {}
    if settings.metrics_on:
        metrics_dir = prepare_multiproc_dir(settings.metrics_path, wipe=True)
        extra_env[MULTIPROC_ENV] = str(metrics_dir)
    env = child_env(work / "flwr-home", extra_env)

    def sink(prefix: str) -> Callable[[str], None] | None:
        if not echo:
            return None
        return lambda line: print(f"[{prefix}] {strip_ansi(line)}", flush=True)

    def new_supernode() -> ManagedProcess:
        return ManagedProcess(
            "supernode", node_cmd, work / "logs" / "supernode.log",
            env=env, cwd=work, on_line=sink("supernode"),
        )  # fmt: skip

    superexec = worker = None
    if settings.worker:
        worker = WorkerSupervisor(
            "worker", [*exec_cmd, "--parent-pid", str(os.getpid())],  # exits with this launcher
            work / "logs" / "worker.log", env=env, cwd=work, on_line=sink("worker"),
            on_restart=lambda line: print(line, file=sys.stderr),
        )  # fmt: skip
    else:
        superexec = ManagedProcess(
            "superexec", exec_cmd, work / "logs" / "superexec.log",
            env={**superexec_env(work / "flwr-home", settings.superexec_poll), **extra_env},
            cwd=work,
            on_line=sink("superexec"),
        )  # fmt: skip
    supernode: ManagedProcess | None = None

    def roles() -> dict[str, int]:
        """The site's processes by role, for the CPU and memory series."""
        procs = {"supernode": supernode, "superexec": superexec,
                 "worker": worker.current if worker is not None else None}
        return {role: p.pid for role, p in procs.items() if p is not None and p.started}

    exporter = None
    if settings.metrics_on:
        try:
            exporter = serve_site(settings.site_name, settings.metrics_path, roles,
                                  settings.metrics_listen, include_self=True)
        except OSError as err:
            print(f"cannot serve metrics on {settings.metrics_listen} (ZK0_METRICS_LISTEN / "
                  f"--metrics-listen): {err}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        print(f"site {settings.site_name!r} metrics on {exporter.url}", flush=True)
    stop = threading.Event()
    restore = _install_signal_handlers(stop)
    try:
        if worker is not None:  # loads torch + LeRobot while the SuperNode connects
            worker.start()
        supernode, since, code = _start_supernode(settings, new_supernode, stop)
        if code is not None:
            return code
        if not stop.is_set() and superexec is not None:
            superexec.start()
        record: rejoin.NodeRecord | None = None
        while not stop.is_set():
            if record is None and (node_id := logged_node_id(supernode, since)) is not None:
                print(f"site {settings.site_name!r} connected as node {node_id}", flush=True)
                record = rejoin.NodeRecord(node_id, settings.superlink, 0.0)
            if record is not None and time.time() - record.last_seen >= rejoin.REFRESH_S:
                record = dataclasses.replace(record, last_seen=time.time())
                record.save(work)
            for proc in (supernode, superexec):
                if proc is None:
                    continue
                code = proc.returncode
                if code is not None:
                    print(_explain_exit(proc, since if proc is supernode else 0),
                          file=sys.stderr)
                    return code or 1
            stop.wait(0.5)
        return 0
    finally:
        if worker is not None:
            worker.stop()
        if superexec is not None:
            superexec.stop()
        if supernode is not None:
            supernode.stop()
        restore()
        if exporter is not None:
            exporter.close()


def _start_supernode(
    settings: SiteSettings, new: Callable[[], ManagedProcess], stop: threading.Event
) -> tuple[ManagedProcess, int, int | None]:
    """Start the SuperNode until the SuperLink has accepted it: (process, its log offset, exit
    code or None).

    It must serve its runtime API within ``startup_timeout``; then it may keep dialling an
    unreachable SuperLink for as long as it likes (Flower retries forever). A 2004 refusal
    while this site's previous node may still count as online
    (:func:`deploy.lab.rejoin.rejoin_deadline`) is retried with backoff, saying so.
    """
    tls_ca = RuntimeTls.in_dir(settings.runtime_tls_dir).ca
    runtime = runtime_address(settings.runtime_connect_host, settings.runtime_port)
    record: rejoin.NodeRecord | None = None
    delays = rejoin.backoff()
    while True:
        proc = new()
        since = proc.log_size()
        proc.start()
        try:
            proc.wait_healthy(
                lambda: stop.is_set() or https_ok(runtime, tls_ca),
                settings.startup_timeout,
                what=f"serving its runtime API on {runtime}",
            )
            # Refusals come within seconds of dialling: wait for the node id, or the exit.
            while not stop.is_set() and logged_node_id(proc, since) is None:
                if proc.returncode is not None:
                    raise ProcessFailed(f"{proc.name} exited with code {proc.returncode}")
                stop.wait(0.25)
        except ProcessFailed as err:
            code = proc.returncode
            if code is None:  # still running, never healthy
                print(str(err), file=sys.stderr)
                return proc, since, 1
            # Re-read: an old launcher still running refreshes it (its node is online, too).
            record = rejoin.NodeRecord.load(settings.work_path) or record
            deadline = rejoin.rejoin_deadline(record, settings.superlink, time.time())
            if deadline is not None and record is not None and rejoin.refused_activation(
                proc.log_text(since)
            ):
                delay = min(next(delays), max(deadline - time.time(), 1.0))
                print(rejoin.retry_message(settings.site_name, record, deadline, delay),
                      file=sys.stderr, flush=True)
                proc.stop()
                if stop.wait(delay):
                    return proc, since, 0
                continue
            print(_explain_exit(proc, since), file=sys.stderr)
            return proc, since, code or 1
        return proc, since, None


def _runtime_hosts(connect_host: str) -> list[str]:
    hosts = [connect_host]
    for extra in ("127.0.0.1", "localhost"):
        if extra not in hosts:
            hosts.append(extra)
    return hosts


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """Turn SIGTERM/SIGINT/SIGHUP into ``stop``; returns a function restoring the old ones."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


# -- CLI ---------------------------------------------------------------------------------------

def _true_false(value: str) -> bool:
    if value.strip().lower() not in ("true", "false"):
        raise ValueError(f"{value!r}: expected true or false")
    return value.strip().lower() == "true"


# The settings given as ``--some-name`` flags, with the type argparse reads each as; the help
# is the field's description (SiteSettings). ``deep_check`` and ``worker`` are switches below.
_FLAGS: dict[str, Callable[[str], Any]] = {
    "superlink": str, "ca_cert": Path, "coordinator_pub": Path, "site_key": Path,
    "site_name": str, "dataset_root": str, "dataset_repo_id": str, "eval_episodes": int,
    "device": str, "split_seed": int, "num_workers": int, "torch_threads": int,
    "share_trajectories": _true_false, "runtime_host": str, "runtime_port": int,
    "superexec_secret_file": Path, "work_dir": Path, "expect": str, "superexec_poll": float,
    "pull_min_seconds": float, "pull_max_seconds": float, "acquire_hold_seconds": float,
    "peer_timeout": float,
    "metrics_listen": str, "metrics_dir": Path,
}


def add_setting_flags(
    p: argparse.ArgumentParser, model: type[BaseSettings], flags: dict[str, Callable[[str], Any]]
) -> None:
    """``--some-name`` for each settings field ``some_name`` of ``model`` (default None: not
    given, so the ``ZK0_SOME_NAME`` variable or the env file decides), its help the field's
    description naming the variable."""
    for name, typ in flags.items():
        flag = "--" + name.replace("_", "-")
        help_text = model.model_fields[name].description
        p.add_argument(flag, type=typ, default=None, help=f"{help_text} [ZK0_{name.upper()}]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``zk0 supernode`` flags; each overrides its ``ZK0_*`` env variable and ``.env``."""
    add_setting_flags(p, SiteSettings, _FLAGS)
    p.add_argument("--env-file", type=Path, default=None,
                   help="read ZK0_* settings from this file (default: .env in the current folder)")
    p.add_argument("--deep-check", action="store_true", default=None,
                   help=f"{SiteSettings.model_fields['deep_check'].description} "
                   "[ZK0_DEEP_CHECK]")
    p.add_argument("--no-worker", dest="worker", action="store_false", default=None,
                   help="no site worker: Flower's SuperExec starts a ClientApp process per "
                   "message, which loads torch and the policy itself [ZK0_WORKER=false]")
    p.add_argument(
        "--check", action="store_true",
        help="run the checks (every video frame decoded), print the commands and exit",
    )
    p.add_argument("-v", "--verbose", action="store_true",
                   help="DEBUG logs from this site's processes (sets ZK0_LOG_LEVEL)")


def settings_from_args(args: argparse.Namespace) -> SiteSettings:
    """SiteSettings with explicit flags over env/.env; SiteConfigError names missing ones."""
    given = {k: getattr(args, k) for k in (*_FLAGS, "deep_check", "worker")
             if getattr(args, k, None) is not None}
    env_file = getattr(args, "env_file", None)
    if env_file is not None and not Path(env_file).is_file():
        raise SiteConfigError(f"--env-file {env_file}: file not found")
    try:
        if env_file is not None:
            return SiteSettings(_env_file=env_file, **given)  # type: ignore[call-arg]
        return SiteSettings(**given)
    except ValidationError as err:
        raise SiteConfigError(validation_problems(err)) from None


def run_cli(args: argparse.Namespace) -> int:
    """``zk0 supernode``: settings, checks, then run (or with ``--check``: print and exit)."""
    if getattr(args, "verbose", False):
        os.environ["ZK0_LOG_LEVEL"] = "DEBUG"  # inherited by SuperNode, SuperExec, ClientApps
    try:
        settings = settings_from_args(args)
        if args.check:
            check_settings(settings, deep=True)
            for cmd in build_site_processes(settings):
                print(shlex.join(cmd))
            print("checks passed", file=sys.stderr)
            return 0
        return run_site(settings)
    except SiteConfigError as err:
        print("zk0 supernode: refusing to start:", file=sys.stderr)
        for line in str(err).splitlines():
            print(f"  - {line}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
