"""What a lab operator runs on its GPU box: this site's SuperNode and its SuperExec.

Settings come from flags, else ``ZK0_*`` environment variables, else a ``.env`` file (see
:class:`SiteSettings`). Everything is checked before any process starts, and each refusal names
the setting, the file or value, and what was expected: a wrong path or key otherwise shows up
only as an opaque exit code (305) or a TLS error in a Flower log.

Process layout (both in their own process groups, stopped by PID on SIGTERM/SIGINT/SIGHUP)::

    flower-supernode  --superlink H:P --root-certificates ca.crt --auth-supernode-private-key K
                      --node-config '...' --isolation process --host 127.0.0.1 --port 9094
                      --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile (local runtime TLS)
                      --superexec-auth-secret-file <work>/superexec.secret
    flower-superexec  --runtime-api-address 127.0.0.1:9094 --root-certificates <runtime CA>
                      --superexec-auth-secret-file <work>/superexec.secret

Why the local runtime API uses TLS and a secret: see :mod:`deploy.runtime_tls` and
:mod:`deploy.flower_commands`.

Metrics: the launcher serves the site's Prometheus endpoint (``--metrics-listen``, default
127.0.0.1:9401; ``off`` disables it): what the site's ClientApps recorded in the multiprocess
folder ``--metrics-dir`` (set as ``PROMETHEUS_MULTIPROC_DIR`` for the children, wiped at start),
the CPU and memory of the site's processes, and its GPUs (see :mod:`deploy.metrics_export`).
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import signal
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from certs.checks import check_ca, check_site_key
from certs.keys import make_secret
from certs.names import HOST_RULE, is_host_name
from common.metrics import MULTIPROC_ENV
from common.settings import NodeConfig, SettingsError
from deploy.flower_commands import runtime_address, superexec_cmd, supernode_cmd
from deploy.flower_env import child_env
from deploy.flower_logs import (
    EXIT_SUPERNODE_CONNECTION_ERROR,
    flower_exit_code,
    logged_node_id,
    strip_ansi,
)
from deploy.health import https_ok
from deploy.metrics_export import SITE_PORT, parse_listen, prepare_multiproc_dir, serve_site
from deploy.processes import ManagedProcess, ProcessFailed
from deploy.runtime_tls import RuntimeTls, ensure_runtime_tls

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")

EXIT_CONFIG_ERROR = 2


def _abs(path: Path) -> Path:
    return Path(path).expanduser().resolve()


class SiteConfigError(ValueError):
    """The site cannot start as configured; one line per problem, each naming the setting."""


class SiteSettings(BaseSettings):
    """One lab's settings: flags > ``ZK0_<NAME>`` env vars > ``.env`` file > defaults."""

    model_config = SettingsConfigDict(
        env_prefix="ZK0_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    superlink: str = Field(description="SuperLink address host:port, no scheme")
    ca_cert: Path = Field(description="federation CA certificate (PEM) that signed the SuperLink")
    site_key: Path = Field(description="this site's OpenSSH EC private key (registered)")
    site_name: str = Field(description="site name, as registered with the SuperLink")
    dataset_root: str = ""
    dataset_repo_id: str = ""
    eval_episodes: int = 2
    device: str = "auto"
    split_seed: int | None = None
    num_workers: int | None = None
    torch_threads: int | None = None
    runtime_host: str = "127.0.0.1"
    runtime_port: int = Field(9094, ge=1, le=65535)
    superexec_secret_file: Path | None = None
    work_dir: Path = Path(".zk0/site")
    startup_timeout: float = 60.0
    metrics_listen: str = f"127.0.0.1:{SITE_PORT}"  # "off": no metrics endpoint
    metrics_dir: Path | None = None  # default <work dir>/metrics

    # Absolute paths: the children run with the work dir as cwd.
    @property
    def work_path(self) -> Path:
        return _abs(self.work_dir)

    @property
    def secret_path(self) -> Path:
        return _abs(self.superexec_secret_file or self.work_dir / "superexec.secret")

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
            # the site's per-run state (optimizer moments) stays in its work dir
            "state-dir": str((self.work_dir / "state").expanduser().resolve()),
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


def check_settings(settings: SiteSettings, *, dataset: bool = True) -> NodeConfig:
    """Every check that can fail before start; raises :class:`SiteConfigError` listing all."""
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
        from supernode.preflight import SiteCheckError, check_site  # loads the ML stack

        try:
            check_site(node)
        except SiteCheckError as err:
            problems.append(str(err))
    if problems or node is None:
        raise SiteConfigError("\n".join(problems))
    return node


# -- processes ---------------------------------------------------------------------------------


def build_site_processes(settings: SiteSettings) -> list[list[str]]:
    """``[supernode_cmd, superexec_cmd]`` for this site (pure: paths only, nothing created)."""
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
    )
    superexec = superexec_cmd(
        runtime_address(settings.runtime_connect_host, settings.runtime_port),
        tls.ca,
        settings.secret_path,
    )
    return [supernode, superexec]


def _explain_exit(proc: ManagedProcess) -> str:
    code = flower_exit_code(proc)
    name = proc.name
    if code == EXIT_SUPERNODE_CONNECTION_ERROR:
        return (
            f"{name} exited (Flower code {code}): the SuperLink refused this SuperNode or could "
            "not be reached. Usual "
            "causes: this site's public key is not registered (the operator runs `flwr supernode "
            "register <site>.pub`), the CA does not match the SuperLink's certificate, or the "
            "address is wrong. See the log above."
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
    """Check, then run SuperNode + SuperExec until a signal or until one of them exits.

    SIGTERM/SIGINT/SIGHUP stop both (SuperExec first, then the SuperNode; SIGKILL after a
    timeout) and return 0; a child exiting on its own stops the other and returns its code.
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

    supernode = ManagedProcess(
        "supernode", node_cmd, work / "logs" / "supernode.log",
        env=env, cwd=work, on_line=sink("supernode"),
    )  # fmt: skip
    superexec = ManagedProcess(
        "superexec", exec_cmd, work / "logs" / "superexec.log",
        env=env, cwd=work, on_line=sink("superexec"),
    )  # fmt: skip
    exporter = None
    if settings.metrics_on:
        children = (("supernode", supernode), ("superexec", superexec))
        try:
            exporter = serve_site(
                settings.site_name, settings.metrics_path,
                lambda: {role: p.pid for role, p in children if p.started},
                settings.metrics_listen, include_self=True,
            )
        except OSError as err:
            print(f"cannot serve metrics on {settings.metrics_listen} (ZK0_METRICS_LISTEN / "
                  f"--metrics-listen): {err}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        print(f"site {settings.site_name!r} metrics on {exporter.url}", flush=True)
    stop = threading.Event()
    restore = _install_signal_handlers(stop)
    try:
        supernode.start()
        tls_ca = RuntimeTls.in_dir(settings.runtime_tls_dir).ca
        runtime = runtime_address(settings.runtime_connect_host, settings.runtime_port)
        try:
            supernode.wait_healthy(
                lambda: stop.is_set() or https_ok(runtime, tls_ca),
                settings.startup_timeout,
                what=f"serving its runtime API on {runtime}",
            )
        except ProcessFailed as err:
            code = supernode.returncode
            print(_explain_exit(supernode) if code else str(err), file=sys.stderr)
            return code or 1
        if not stop.is_set():
            superexec.start()
        announced = False
        while not stop.is_set():
            if not announced and (node_id := logged_node_id(supernode)) is not None:
                print(f"site {settings.site_name!r} connected as node {node_id}", flush=True)
                announced = True
            for proc in (supernode, superexec):
                code = proc.returncode
                if code is not None:
                    print(_explain_exit(proc), file=sys.stderr)
                    return code or 1
            stop.wait(0.5)
        return 0
    finally:
        superexec.stop()
        supernode.stop()
        restore()
        if exporter is not None:
            exporter.close()


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

_FLAGS: dict[str, tuple[type, str]] = {
    "superlink": (str, "SuperLink address host:port"),
    "ca_cert": (Path, "federation CA certificate (PEM)"),
    "site_key": (Path, "this site's OpenSSH EC private key"),
    "site_name": (str, "site name (as registered)"),
    "dataset_root": (str, "local LeRobotDataset folder"),
    "dataset_repo_id": (str, "dataset repo id (when no local root)"),
    "eval_episodes": (int, "episodes held out for evaluation"),
    "device": (str, "auto | cpu | cuda | cuda:N | mps"),
    "split_seed": (int, "seed of the train/eval episode split"),
    "num_workers": (int, "DataLoader worker processes"),
    "torch_threads": (int, "torch CPU threads (0 = default)"),
    "runtime_host": (str, "host of this SuperNode's runtime API"),
    "runtime_port": (int, "port of this SuperNode's runtime API (distinct per SuperNode)"),
    "superexec_secret_file": (Path, "SuperExec secret file (created 0600 if missing)"),
    "work_dir": (Path, "logs, runtime TLS, secret, FLWR_HOME"),
    "metrics_listen": (str, "host:port of this site's /metrics, or 'off' (default "
                            f"127.0.0.1:{SITE_PORT})"),
    "metrics_dir": (Path, "prometheus multiprocess folder (default WORK_DIR/metrics)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``zk0 supernode`` flags; each overrides its ``ZK0_*`` env variable and ``.env``."""
    for name, (typ, help_text) in _FLAGS.items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=typ, default=None, help=f"{help_text} [ZK0_{name.upper()}]")
    p.add_argument("--env-file", type=Path, default=None, help="read settings from this file")
    p.add_argument(
        "--check", action="store_true", help="run the checks, print the commands and exit"
    )


def settings_from_args(args: argparse.Namespace) -> SiteSettings:
    """SiteSettings with explicit flags over env/.env; SiteConfigError names missing ones."""
    given = {k: getattr(args, k) for k in _FLAGS if getattr(args, k, None) is not None}
    env_file = getattr(args, "env_file", None)
    if env_file is not None and not Path(env_file).is_file():
        raise SiteConfigError(f"--env-file {env_file}: file not found")
    try:
        if env_file is not None:
            return SiteSettings(_env_file=env_file, **given)  # type: ignore[call-arg]
        return SiteSettings(**given)
    except ValidationError as err:
        lines = []
        for item in err.errors():
            name = str(item["loc"][0]) if item["loc"] else "?"
            where = f"--{name.replace('_', '-')} / ZK0_{name.upper()}"
            lines.append(f"{where}: {item['msg']}")
        raise SiteConfigError("\n".join(lines)) from None


def run_cli(args: argparse.Namespace) -> int:
    """``zk0 supernode``: settings, checks, then run (or with ``--check``: print and exit)."""
    try:
        settings = settings_from_args(args)
        if args.check:
            check_settings(settings)
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
