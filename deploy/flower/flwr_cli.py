"""The operator's side of Flower: the ``flwr`` CLI against a SuperLink's Control API.

Every call that Flower 1.42 can answer as JSON is made with ``--format json`` and read as JSON
(run ids, node ids, node and run status); nothing here scrapes human-readable output. What
only Flower's logs say is in :mod:`deploy.flower.logs`.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from common import atomic
from common.settings import flwr_config_pairs
from deploy.flower.env import child_env, flower_exe
from deploy.flower.logs import strip_ansi
from deploy.flower.processes import LineSink, ManagedProcess


class FlwrCliError(RuntimeError):
    """A ``flwr`` CLI call failed; the message has its exit code and output."""


def write_connection_config(flwr_home: Path, name: str, address: str, ca: Path) -> Path:
    """Add/replace ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml`` and make it default.

    ``root-certificates`` must be absolute (flwr resolves it from wherever it is started).
    Writing the file ourselves also keeps flwr from creating its default config, whose
    ``local`` connection would lazily start a simulation SuperLink.
    """
    path = Path(flwr_home) / "config.toml"
    data: dict[str, Any] = {}
    if path.exists():
        data = tomllib.loads(path.read_text())
    links = data.setdefault("superlink", {})
    links[name] = {"address": address, "root-certificates": str(Path(ca).resolve())}
    links["default"] = name
    return atomic.write_bytes(path, tomli_w.dumps(data).encode())


def read_connection(flwr_home: Path, name: str | None = None) -> tuple[str, str, Path]:
    """(name, address, CA path) of connection ``name`` (default: the config's default) in
    ``$FLWR_HOME/config.toml``; :class:`FlwrCliError` naming the file if it is not there."""
    path = Path(flwr_home) / "config.toml"
    try:
        links = tomllib.loads(path.read_text()).get("superlink", {})
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise FlwrCliError(f"flwr connection config {path}: {err}") from None
    name = name or links.get("default")
    entry = links.get(name) if name else None
    if not isinstance(entry, dict) or "address" not in entry or "root-certificates" not in entry:
        known = sorted(k for k, v in links.items() if isinstance(v, dict))
        raise FlwrCliError(
            f"flwr connection config {path}: no TLS connection {name!r} (known: {known})"
        )
    return str(name), str(entry["address"]), Path(entry["root-certificates"])


def _cli_env(flwr_home: Path) -> dict[str, str]:
    # No colours and wide lines: what the CLI prints is read back or shown in our logs.
    return child_env(flwr_home, {"NO_COLOR": "1", "COLUMNS": "200"})


def flwr_cli(
    args: Sequence[str], flwr_home: Path, *, timeout: float = 60.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``flwr <args>`` with our environment; raise :class:`FlwrCliError` on failure."""
    proc = subprocess.run(
        [flower_exe("flwr"), *args],
        env=_cli_env(flwr_home),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise FlwrCliError(
            f"flwr {' '.join(args)} exited with {proc.returncode}:\n"
            f"{strip_ansi(proc.stdout + proc.stderr).strip()}"
        )
    return proc


def _json_payload(text: str) -> dict[str, Any]:
    """The JSON object flwr printed with ``--format json`` (ignoring any other lines).

    With ``--format json`` flwr reports a failure as ``{"success": false, ...}`` (exit code 0),
    so that is turned into :class:`FlwrCliError` here.
    """
    text = strip_ansi(text)
    start = text.find("{")
    if start < 0:
        raise FlwrCliError(f"no JSON in flwr output: {text.strip()[:500]}")
    payload, _ = json.JSONDecoder().raw_decode(text[start:])
    if not isinstance(payload, dict):
        raise FlwrCliError(f"unexpected flwr JSON: {payload!r}")
    if payload.get("success") is False:
        raise FlwrCliError(f"flwr reported failure: {payload}")
    return payload


def _flwr_json(args: Sequence[str], flwr_home: Path, timeout: float = 60.0) -> dict[str, Any]:
    proc = flwr_cli([*args, "--format", "json"], flwr_home, timeout=timeout)
    return _json_payload(proc.stdout)


def register_supernode(flwr_home: Path, conn: str, pubkey: Path, name: str) -> int:
    """``flwr supernode register KEY.pub <conn> --name <name>``; returns the node id."""
    payload = _flwr_json(["supernode", "register", str(pubkey), conn, "--name", name], flwr_home)
    return int(payload["node-id"])


def unregister_supernode(flwr_home: Path, conn: str, node_id: int) -> None:
    """``flwr supernode unregister <node_id> <conn>``: the node's key is refused from its next
    request to the Fleet API on (Flower marks the node unregistered)."""
    _flwr_json(["supernode", "unregister", str(node_id), conn], flwr_home)


def list_supernodes(flwr_home: Path, conn: str) -> list[dict[str, Any]]:
    """``flwr supernode list <conn>``: node-id, status (online/offline/...)."""
    return list(_flwr_json(["supernode", "list", conn], flwr_home).get("nodes", []))


def list_runs(flwr_home: Path, conn: str, run_id: int | None = None) -> list[dict[str, Any]]:
    """``flwr ls <conn>``: run-id, status (e.g. ``finished:completed``), bytes."""
    args = ["ls", conn] + (["--run-id", str(run_id)] if run_id is not None else [])
    return list(_flwr_json(args, flwr_home).get("runs", []))


def stop_run(flwr_home: Path, conn: str, run_id: int) -> None:
    """``flwr stop <run_id> <conn>`` (best effort)."""
    flwr_cli(["stop", str(run_id), conn], flwr_home, check=False)


def format_overrides(overrides: Mapping[str, Any]) -> list[str]:
    """``{"num-server-rounds": 3}`` -> ``["-c", "num-server-rounds=3", ...]``."""
    args: list[str] = []
    for pair in flwr_config_pairs(overrides, "run config"):
        args += ["-c", pair]
    return args


def flwr_run_args(
    app_dir: Path, conn: str, overrides: Mapping[str, Any] | None = None
) -> list[str]:
    """``run <app_dir> <conn> -c k=v ...`` (app_dir holds the app's pyproject.toml)."""
    return ["run", str(Path(app_dir).resolve()), conn, *format_overrides(overrides or {})]


def start_run(
    flwr_home: Path,
    conn: str,
    app_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    timeout: float = 300.0,
) -> int:
    """``flwr run ... --format json``: builds the app bundle, submits it, returns the run id.

    Not ``--stream``: in JSON mode flwr swallows the streamed log lines (it redirects stdout
    while its handler is active), so the logs are followed by :func:`follow_run`.
    """
    payload = _flwr_json(flwr_run_args(app_dir, conn, overrides), flwr_home, timeout=timeout)
    return int(payload["run-id"])


def follow_run(
    flwr_home: Path,
    conn: str,
    run_id: int,
    *,
    log_path: Path,
    on_line: LineSink | None = None,
) -> ManagedProcess:
    """Start ``flwr log <run_id> <conn> --stream`` as a :class:`ManagedProcess`.

    It prints the run's log from its start and exits (code 0) once the run has finished, also
    when the run failed: read the final status with :func:`list_runs`.
    """
    proc = ManagedProcess(
        "flwr-log",
        [flower_exe("flwr"), "log", str(run_id), conn, "--stream"],
        log_path,
        env=_cli_env(flwr_home),
        on_line=on_line,
    )
    return proc.start()
