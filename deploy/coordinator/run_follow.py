"""Submit the app to a SuperLink and follow the run to its end: what ``zk0 cluster``
(:meth:`deploy.cluster.local_cluster.LocalCluster.run`) and the compose stack's ``run`` service
(:mod:`deploy.containers.compose_stack`) both do.

``flwr run --format json`` submits (the run id), ``flwr log --stream`` follows with every line
handed to a sink, and the run's status in ``flwr ls`` decides when it is over: Flower's log stream
can end before the run does (seen after minutes without a log line on a busy machine).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.flower import flwr_cli
from deploy.flower.logs import strip_ansi
from deploy.flower.processes import ManagedProcess


@dataclass
class RunResult:
    """Outcome of :func:`run_app`. ``status`` is Flower's, e.g. ``finished:completed``."""

    run_id: int
    status: str | None
    returncode: int | None
    duration_s: float
    output: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def finished(status: str | None) -> bool:
    return bool(status) and str(status).startswith("finished")


def final_status(
    flwr_home: Path, connection: str, run_id: int, wait: float | None = 15.0
) -> tuple[str | None, dict[str, Any]]:
    """The run's status once finished, or whatever it is after ``wait`` s (None: no limit)."""
    deadline = math.inf if wait is None else time.monotonic() + wait
    row: dict[str, Any] = {}
    while True:
        try:
            rows = flwr_cli.list_runs(flwr_home, connection, run_id)
        except flwr_cli.FlwrCliError as err:  # SuperLink gone: report, do not mask the run
            return None, {"error": str(err)}
        row = next((r for r in rows if str(r.get("run-id")) == str(run_id)), {})
        status = row.get("status")
        if finished(status) or time.monotonic() > deadline:
            return status, row
        time.sleep(0.5)


def run_app(
    flwr_home: Path,
    connection: str,
    app_dir: Path,
    overrides: Mapping[str, Any] | None,
    logs: Path,
    *,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
    on_follow: Callable[[ManagedProcess | None], None] | None = None,
    stop_timeout: float = 10.0,
) -> RunResult:
    """Submit ``app_dir`` with ``overrides``, stream its log to ``on_line`` (ANSI stripped; the
    first line is ``started run N``), wait for the end or at most ``timeout`` s (then ``flwr
    stop``). ``on_follow`` gets the ``flwr log`` process once started and None once stopped (a
    caller that may be interrupted stops it first). :class:`flwr_cli.FlwrCliError` if the run
    cannot even start."""
    lines: list[str] = []

    def sink(line: str) -> None:
        line = strip_ansi(line)
        lines.append(line)
        if on_line:
            on_line(line)

    t0 = time.monotonic()
    run_id = flwr_cli.start_run(flwr_home, connection, app_dir, overrides)
    sink(f"started run {run_id}")
    proc = flwr_cli.follow_run(
        flwr_home, connection, run_id, log_path=logs / f"flwr-log-{run_id}.log", on_line=sink
    )
    if on_follow:
        on_follow(proc)
    details: dict[str, Any] = {}
    try:
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - t0))
        code = proc.wait(left)
        status: str | None = None
        if code is not None:
            left = None if timeout is None else max(15.0, timeout - (time.monotonic() - t0))
            status, details = final_status(flwr_home, connection, run_id, wait=left)
        if code is None or (status is not None and not finished(status)):  # timed out
            flwr_cli.stop_run(flwr_home, connection, run_id)
            code = proc.stop(stop_timeout) if code is None else code
            status, details = final_status(flwr_home, connection, run_id)
    finally:
        proc.stop(stop_timeout)
        if on_follow:
            on_follow(None)
    return RunResult(
        run_id=run_id,
        status=status,
        returncode=code,
        duration_s=time.monotonic() - t0,
        output="\n".join(lines),
        details=details,
    )
