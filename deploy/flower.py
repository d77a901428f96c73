"""Exact Flower 1.42 command lines (as argument lists) and ``flwr`` CLI helpers.

Every flag here was checked against the installed flwr 1.42.0 code (``flwr/superlink/cli``,
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
  own Runtime API (default 9094, what its SuperExec and ClientApps call) also serves HTTPS: in
  1.42 ``flower-supernode`` accepts ``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile`` for it and
  ``flower-superexec --root-certificates`` verifies it (and passes the CA on to each
  ``flwr-clientapp``). With plain HTTP nothing authenticates that server: any local process
  that grabs the port first (e.g. while the SuperNode restarts) would receive task tokens and
  the global model, and once SuperNode and SuperExec sit in separate containers the traffic
  leaves the host's loopback. So TLS, with a per-node throwaway CA (:func:`ensure_runtime_tls`;
  a lab cannot get certificates from the federation CA, whose key stays with the operator).
  It also takes ``--superexec-auth-secret-file`` (only honoured with ``--isolation process``):
  a per-site secret shared with the site's SuperExec, without which any local process could
  call ``AcquireTask`` and obtain ClientApp tasks and their tokens (checked: 401 without it).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.settings import NodeConfig
from deploy.processes import LineSink, ManagedProcess

#: Flower exit code of a SuperNode refused by the SuperLink (unregistered key, no key while
#: auth is on, TLS verification failed). Only in the log: see :func:`flower_exit_code`.
EXIT_SUPERNODE_CONNECTION_ERROR = 305
#: SuperNode started with ``--insecure`` and a key.
EXIT_SUPERNODE_INSECURE_WITH_KEY = 303

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RUN_STARTED = re.compile(r"Successfully started run (\d+)")
_EXIT_CODE = re.compile(r"Exit Code: (\d+)")
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")


class FlwrCliError(RuntimeError):
    """A ``flwr`` CLI call failed; the message has its exit code and output."""


# -- executables and environment ---------------------------------------------------------------


def bin_dir() -> Path:
    """Scripts folder of the running interpreter (the venv's ``bin``), not resolved.

    Flower's SuperExec starts ``flwr-serverapp`` / ``flwr-clientapp`` by bare name, so this
    folder must also be on the children's PATH even when the venv is not activated.
    """
    return Path(sys.executable).parent


def flower_exe(name: str) -> str:
    """Absolute path of a Flower console script (``flower-superlink``, ``flwr``, ...)."""
    candidate = bin_dir() / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def child_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower child process.

    Inherits ours (so ``HF_HUB_OFFLINE``, ``HF_HOME``, ``HF_LEROBOT_HOME`` and CUDA settings
    reach the ClientApps), turns off telemetry and the update check (no network besides the
    federation's), puts this venv's scripts first on PATH and sets ``FLWR_HOME`` (connection
    config, installed FABs) so nothing lands in the operator's ``~/.flwr``.
    """
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    env["PATH"] = os.pathsep.join([str(bin_dir()), env.get("PATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


# -- secrets and local TLS ---------------------------------------------------------------------


def ensure_secret_file(path: Path) -> Path:
    """Create a random SuperExec auth secret (0600) if ``path`` does not exist yet.

    The content never appears in command lines or logs: only the path is passed around.
    """
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


@dataclass(frozen=True)
class RuntimeTls:
    """TLS files of a SuperNode's local Runtime API (server cert/key, CA that verifies it)."""

    cert: Path
    key: Path
    ca: Path


def _cert_covers(cert_path: Path, hosts: Sequence[str]) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    names = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    names |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    fresh = cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return fresh and all(h in names for h in hosts)


def ensure_runtime_tls(
    directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 365
) -> RuntimeTls:
    """Server certificate for a SuperNode's loopback Runtime API, made once and reused.

    Signed by a one-off CA whose private key is never written to disk: nobody can mint another
    certificate this SuperExec would trust. Reused while it covers ``hosts`` and is valid.
    """
    from cryptography.hazmat.primitives import serialization

    from certs.make import build_ca, build_server_cert, write_key_and_cert

    directory = Path(directory)
    tls = RuntimeTls(directory / "runtime.crt", directory / "runtime.key", directory / "ca.crt")
    if tls.key.exists() and tls.ca.exists() and _cert_covers(tls.cert, hosts):
        return tls
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = build_ca("zk0 SuperNode runtime CA", days)
    key, cert = build_server_cert(ca_key, ca_cert, list(hosts), hosts[0], days)
    write_key_and_cert(key, cert, tls.key, tls.cert)
    tls.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return tls


# -- command lines -----------------------------------------------------------------------------


def _path(path: Path) -> str:
    """Absolute path: Flower processes may run with another cwd than the caller's."""
    return str(Path(path).expanduser().resolve())


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
    cmd = [
        flower_exe("flower-superexec"),
        "--runtime-api-address", runtime_address,
        "--root-certificates", _path(root_certificates),
        "--superexec-auth-secret-file", _path(secret_file),
    ]  # fmt: skip
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    return cmd


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
) -> list[str]:
    """``flower-supernode`` for one site: TLS + key auth to the SuperLink, process isolation.

    Each SuperNode on one machine needs its own ``runtime_port`` (default 9094 would clash).
    The runtime API is served over TLS and protected by the site's SuperExec secret (see the
    module docstring).
    """
    cfg = node_config.to_flwr_arg() if isinstance(node_config, NodeConfig) else node_config
    cmd = [
        flower_exe("flower-supernode"),
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


def runtime_address(host: str, port: int) -> str:
    """``host:port`` as Flower wants it (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- flwr CLI ----------------------------------------------------------------------------------


def write_connection_config(flwr_home: Path, name: str, address: str, ca: Path) -> Path:
    """Add/replace ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml`` and make it default.

    ``root-certificates`` must be absolute (flwr resolves it from wherever it is started).
    Writing the file ourselves also keeps flwr from creating its default config, whose
    ``local`` connection would lazily start a simulation SuperLink.
    """
    import tomli_w

    path = Path(flwr_home) / "config.toml"
    data: dict[str, Any] = {}
    if path.exists():
        data = tomllib.loads(path.read_text())
    links = data.setdefault("superlink", {})
    links[name] = {"address": address, "root-certificates": str(Path(ca).resolve())}
    links["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path


def flwr_cli(
    args: Sequence[str], flwr_home: Path, *, timeout: float = 60.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``flwr <args>`` with our environment; raise :class:`FlwrCliError` on failure."""
    cmd = [flower_exe("flwr"), *args]
    proc = subprocess.run(
        cmd,
        env=child_env(flwr_home, {"NO_COLOR": "1", "COLUMNS": "200"}),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise FlwrCliError(
            f"flwr {' '.join(args)} exited with {proc.returncode}:\n"
            f"{_ANSI.sub('', proc.stdout + proc.stderr).strip()}"
        )
    return proc


def _json_payload(text: str) -> dict[str, Any]:
    """The JSON object flwr printed with ``--format json`` (ignoring any other lines)."""
    text = _ANSI.sub("", text)
    start = text.find("{")
    if start < 0:
        raise FlwrCliError(f"no JSON in flwr output: {text.strip()[:500]}")
    payload, _ = json.JSONDecoder().raw_decode(text[start:])
    if not isinstance(payload, dict):
        raise FlwrCliError(f"unexpected flwr JSON: {payload!r}")
    if payload.get("success") is False:
        raise FlwrCliError(f"flwr reported failure: {payload}")
    return payload


def register_supernode(flwr_home: Path, conn: str, pubkey: Path, name: str) -> int:
    """``flwr supernode register KEY.pub <conn> --name <name>``; returns the node id."""
    proc = flwr_cli(
        ["supernode", "register", str(pubkey), conn, "--name", name, "--format", "json"],
        flwr_home,
    )
    return int(_json_payload(proc.stdout)["node-id"])


def list_supernodes(flwr_home: Path, conn: str) -> list[dict[str, Any]]:
    """``flwr supernode list <conn> --format json``: node-id, status (online/offline/...)."""
    proc = flwr_cli(["supernode", "list", conn, "--format", "json"], flwr_home)
    return list(_json_payload(proc.stdout).get("nodes", []))


def list_runs(flwr_home: Path, conn: str, run_id: int | None = None) -> list[dict[str, Any]]:
    """``flwr ls <conn> --format json``: run-id, status (e.g. ``finished:completed``), bytes."""
    args = ["ls", conn, "--format", "json"]
    if run_id is not None:
        args += ["--run-id", str(run_id)]
    proc = flwr_cli(args, flwr_home)
    return list(_json_payload(proc.stdout).get("runs", []))


def stop_run(flwr_home: Path, conn: str, run_id: int) -> None:
    """``flwr stop <run_id> <conn>`` (best effort)."""
    flwr_cli(["stop", str(run_id), conn], flwr_home, check=False)


def toml_value(value: Any) -> str:
    """One run-config value as TOML, in a form ``flwr run -c`` parses back unchanged.

    flwr splits ``-c`` on whitespace unless the value is quoted and does not unescape, so
    strings use TOML literal quotes ('...') and may not contain both quote kinds.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if "\n" in value:
            raise ValueError(f"run config string {value!r}: newlines are not supported")
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
        raise ValueError(f"run config string {value!r}: cannot quote it for flwr run -c")
    raise TypeError(f"run config value {value!r}: expected bool, int, float or str")


def format_overrides(overrides: Mapping[str, Any]) -> list[str]:
    """``{"num-server-rounds": 3}`` -> ``["-c", "num-server-rounds=3", ...]``."""
    args: list[str] = []
    for key, value in overrides.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"run config key {key!r}: only letters, digits, '-', '_', '.'")
        args += ["-c", f"{key}={toml_value(value)}"]
    return args


def flwr_run_cmd(
    app_dir: Path, conn: str, overrides: Mapping[str, Any] | None = None, stream: bool = True
) -> list[str]:
    """``flwr run <app_dir> <conn> [--stream] -c k=v ...`` (app_dir holds pyproject.toml)."""
    cmd = [flower_exe("flwr"), "run", str(Path(app_dir).resolve()), conn]
    if stream:
        cmd.append("--stream")
    return cmd + format_overrides(overrides or {})


def flwr_run(
    app_dir: Path,
    conn: str,
    overrides: Mapping[str, Any] | None = None,
    stream: bool = True,
    *,
    flwr_home: Path,
    log_path: Path,
    on_line: LineSink | None = None,
) -> ManagedProcess:
    """Start ``flwr run`` as a :class:`ManagedProcess` (caller waits and may stop it by PID).

    With ``stream`` the client follows the run's logs until it finishes; its exit code is 0
    even if the run failed, so read the final status with :func:`list_runs`.
    """
    proc = ManagedProcess(
        "flwr-run",
        flwr_run_cmd(app_dir, conn, overrides, stream),
        log_path,
        env=child_env(flwr_home, {"NO_COLOR": "1", "COLUMNS": "200"}),
        on_line=on_line,
    )
    return proc.start()


def strip_ansi(text: str) -> str:
    """Text without terminal colour codes (Flower colours its log lines)."""
    return _ANSI.sub("", text)


def parse_run_id(output: str) -> int | None:
    """Run id from ``flwr run`` output ("Successfully started run 123...")."""
    match = _RUN_STARTED.search(_ANSI.sub("", output))
    return int(match.group(1)) if match else None


def flower_exit_code(proc: ManagedProcess) -> int | None:
    """Flower's own exit code (e.g. 305) of a process that has exited, else None.

    flwr 1.42's ``flwr_exit`` logs "Exit Code: 305" but calls ``sys.exit(1)`` for every error
    code (0-99 are successes and exit 0), so the real reason is only in the log. Falls back to
    the process's exit status when no code was logged (e.g. killed by a signal).
    """
    if proc.returncode is None:
        return None
    codes = _EXIT_CODE.findall(_ANSI.sub("", proc.log_tail(200)))
    return int(codes[-1]) if codes else proc.returncode


def logged_node_id(proc: ManagedProcess) -> int | None:
    """The node id a SuperNode logs once the SuperLink accepted it ("SuperNode ID: N")."""
    match = _NODE_ID.search(proc.log_text())
    return int(match.group(1)) if match else None


# -- health ------------------------------------------------------------------------------------


def https_ok(address: str, ca: Path, path: str = "/health", timeout: float = 2.0) -> bool:
    """True if ``GET https://<address><path>`` answers 200 with a certificate from ``ca``."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=ctx)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
