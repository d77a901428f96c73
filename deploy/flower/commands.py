"""Exact Flower 1.42 command lines (argument lists) for the SuperLink, SuperExecs and SuperNodes.

Every flag was checked against the installed flwr 1.42.0 code (``flwr/superlink/cli``,
``flwr/supernode/cli``, ``flwr/supercore/cli``), not against docs for older versions.

Security layout (no ``--insecure`` anywhere):

* SuperLink: one HTTPS port for the Fleet, Control and Runtime APIs (``--ssl-*``),
  ``--enable-supernode-auth`` (only registered site keys may connect), ``--isolation process``
  with ``--superexec-auth-secret-file``: the Runtime API's ``AcquireTask`` (which hands out the
  task token that lets a process act as the ServerApp) then needs an HMAC signed with the secret;
  without it any local process could take over a run (see the deployment notes).
* ServerApp SuperExec: connects to the SuperLink's Runtime API with ``--root-certificates`` (the
  federation CA) and the same secret.
* SuperNode: connects to the SuperLink with ``--root-certificates`` and its OpenSSH EC key. Its
  own Runtime API (default 9094) is served over TLS (:mod:`deploy.flower.runtime_tls` says why) and
  takes ``--superexec-auth-secret-file`` (only honoured with ``--isolation process``): a per-site
  secret shared with the site's SuperExec, without which any local process could call
  ``AcquireTask`` and obtain ClientApp tasks and their tokens (checked: 401 without it). It
  runs as :mod:`deploy.flower.supernode_waits` (Flower's SuperNode with its fixed waits on the
  message path made short or event-driven), unless asked for Flower's own.
* Site worker (:mod:`supernode.worker`): the site's executor of ClientApp tasks, on that runtime
  API with the runtime CA and the site's secret, as a SuperExec would be.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.settings import NodeConfig
from deploy.flower.env import flower_exe
from deploy.flower.runtime_tls import RuntimeTls
from deploy.flower.supernode_waits import Waits


def _path(path: Path) -> str:
    """Absolute path: Flower processes may run with another cwd than the caller's."""
    return str(Path(path).expanduser().resolve())


def runtime_address(host: str, port: int) -> str:
    """``host:port`` as Flower wants it (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def superlink_cmd(
    *,
    certfile: Path,
    keyfile: Path,
    ca_certfile: Path,
    secret_file: Path,
    database: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> list[str]:
    """``flower-superlink`` with TLS, node auth, process isolation and persistent state.

    ``--disable-runtime-dependency-installation``: the image already has every dependency; by
    default 1.42 would ``uv sync`` a fresh venv per run from a package index we do not reach.
    ``--database``: SQLite, so runs, node registrations and node ids survive a restart.
    """
    return [
        flower_exe("flower-superlink"),
        "--ssl-certfile", _path(certfile),
        "--ssl-keyfile", _path(keyfile),
        "--ssl-ca-certfile", _path(ca_certfile),
        "--enable-supernode-auth",
        "--isolation", "process",
        "--superexec-auth-secret-file", _path(secret_file),
        "--database", _path(database),
        "--host", host,
        "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip


def superexec_cmd(
    runtime_address: str,
    root_certificates: Path,
    secret_file: Path,
    *,
    parent_pid: int | None = None,
) -> list[str]:
    """``flower-superexec`` for a SuperLink (runs ServerApps) or a SuperNode (ClientApps).

    It picks the task type from the Runtime API it talks to. TLS is verified against
    ``root_certificates`` and ``AcquireTask`` is signed with the secret. Runtime dependency
    installation stays off (its default). ``parent_pid`` makes it exit with that process.
    """
    return [flower_exe("flower-superexec"),
            *_executor_args(runtime_address, root_certificates, secret_file, parent_pid)]


def supernode_cmd(
    *,
    superlink: str,
    root_certificates: Path,
    private_key: Path,
    node_config: NodeConfig | str,
    runtime_port: int,
    runtime_tls: RuntimeTls,
    secret_file: Path,
    runtime_host: str = "127.0.0.1",
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    waits: Waits | None = Waits(),  # noqa: B008  (frozen: one shared default is safe)
) -> list[str]:
    """``flower-supernode`` for one site: TLS + key auth to the SuperLink, process isolation.

    Each SuperNode on one machine needs its own ``runtime_port`` (default 9094 would clash).
    The runtime API is served over TLS and protected by the site's SuperExec secret (see the
    module docstring). With ``waits`` (the default) through
    :mod:`deploy.flower.supernode_waits`; ``None``: Flower's ``flower-supernode`` as shipped.
    """
    cfg = node_config.to_flwr_arg() if isinstance(node_config, NodeConfig) else node_config
    exe = [flower_exe("flower-supernode")] if waits is None else [
        sys.executable, "-m", "deploy.flower.supernode_waits",
        "--pull-min-seconds", f"{waits.pull_min:g}", "--pull-max-seconds", f"{waits.pull_max:g}",
        "--acquire-hold-seconds", f"{waits.acquire_hold:g}",
        "--object-retry-seconds", f"{waits.object_retry:g}",
    ]  # fmt: skip
    cmd = [
        *exe,
        "--superlink", superlink,
        "--root-certificates", _path(root_certificates),
        "--auth-supernode-private-key", _path(private_key),
        "--node-config", cfg,
        "--isolation", "process",
        "--host", runtime_host,
        "--port", str(runtime_port),
        "--ssl-certfile", _path(runtime_tls.cert),
        "--ssl-keyfile", _path(runtime_tls.key),
        "--ssl-ca-certfile", _path(runtime_tls.ca),
        "--superexec-auth-secret-file", _path(secret_file),
    ]  # fmt: skip
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


def worker_cmd(
    runtime_address: str,
    root_certificates: Path,
    secret_file: Path,
    *,
    peer_timeout: float | None = None,
    acquire_timeout: float | None = None,
    parent_pid: int | None = None,
) -> list[str]:
    """``python -m supernode.worker`` with this interpreter (the site's zk0 install): the
    site's executor of ClientApp tasks on the SuperNode's runtime API (TLS verified against
    ``root_certificates``, ``AcquireTask`` signed with the site's secret)."""
    cmd = [sys.executable, "-m", "supernode.worker",
           *_executor_args(runtime_address, root_certificates, secret_file, parent_pid)]
    if peer_timeout is not None:
        cmd += ["--peer-timeout", f"{peer_timeout:g}"]
    if acquire_timeout is not None:
        cmd += ["--acquire-timeout", f"{acquire_timeout:g}"]
    return cmd


def _executor_args(runtime_address: str, root_certificates: Path, secret_file: Path,
                   parent_pid: int | None) -> list[str]:
    """How a task executor (Flower's SuperExec, or the site worker in its place) reaches a
    runtime API: the same flags for both, so the worker is a drop-in for ``flower-superexec``."""
    args = [
        "--runtime-api-address", runtime_address,
        "--root-certificates", _path(root_certificates),
        "--superexec-auth-secret-file", _path(secret_file),
    ]  # fmt: skip
    if parent_pid is not None:
        args += ["--parent-pid", str(parent_pid)]
    return args
