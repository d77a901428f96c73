"""The site worker as a process role: its command line, and a supervisor that restarts it.

``zk0 supernode`` (one lab) and ``zk0 cluster`` / :class:`deploy.cluster.local_cluster.LocalCluster`
(every site) start one :mod:`supernode.worker` per site next to its SuperNode and put its socket
into the node config (``worker-socket``), so the site's ClientApps relay to it. The worker
holds torch, LeRobot, the policy and the dataset; if it dies (OOM, a crash, a kill) the
message it was serving fails with a clear reason, and :class:`WorkerSupervisor` starts a new
one, which the next message reaches (the relay waits up to a minute for it).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from deploy.flower.processes import ManagedProcess, ProcessFailed

SOCKET_NAME = "worker.sock"
RESTART_BACKOFF_CAP = 30.0  # seconds between restarts of a worker that keeps dying
QUICK_DEATH_SECONDS = 30.0  # a worker that dies sooner than this after its start is crash-looping


def socket_path(folder: Path) -> Path:
    """The worker's socket inside ``folder`` (made 0700 by the worker)."""
    return Path(folder).expanduser().absolute() / SOCKET_NAME


def worker_cmd(socket: Path, parent_pid: int | None = None) -> list[str]:
    """``python -m supernode.worker`` with this interpreter (the site's zk0 install)."""
    cmd = [sys.executable, "-m", "supernode.worker", "--socket", str(socket)]
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    return cmd


def worker_ready(socket: Path) -> bool:
    """The worker answers a ping with compatible code (loads the channel module only)."""
    from supernode.channel import ChannelError
    from supernode.relay import ping

    try:
        ping(socket, wait=0.0)
    except (ChannelError, OSError):
        return False
    return True


class WorkerSupervisor:
    """One site's worker process, restarted whenever it exits until :meth:`stop`.

    Every incarnation is a new :class:`ManagedProcess` (own process group, stopped by PID)
    appending to the same log. ``on_line`` gets the worker's output lines (console echo).
    """

    def __init__(
        self,
        name: str,
        socket: Path,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        on_line: Callable[[str], None] | None = None,
        on_restart: Callable[[str], None] | None = None,
        parent_pid: int | None = None,
        poll: float = 0.5,
    ) -> None:
        self.name = name
        self.socket = Path(socket)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.on_line = on_line
        self.on_restart = on_restart
        self.parent_pid = parent_pid
        self.poll = poll
        self.incarnations: list[ManagedProcess] = []
        self.restarts = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0

    @property
    def current(self) -> ManagedProcess | None:
        return self.incarnations[-1] if self.incarnations else None

    @property
    def pid(self) -> int | None:
        proc = self.current
        return proc.pid if proc is not None and proc.is_running() else None

    def _spawn(self) -> ManagedProcess:
        proc = ManagedProcess(
            self.name, worker_cmd(self.socket, self.parent_pid), self.log_path,
            env=self.env, cwd=self.cwd, on_line=self.on_line,
        )  # fmt: skip
        self.incarnations.append(proc)
        self._started_at = time.monotonic()
        return proc.start()

    def start(self) -> WorkerSupervisor:
        """Start the worker and the thread that restarts it (returns at once)."""
        with self._lock:
            self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"{self.name}-supervisor",
                                        daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> None:
        """Block until the worker answers on its socket; ProcessFailed (with the log tail) if it
        exits or stays silent for ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.current
            if proc is not None and worker_ready(self.socket):
                return
            if self._stopping.is_set():
                break
            time.sleep(0.2)
        tail = self.current.log_tail() if self.current else "(never started)"
        raise ProcessFailed(
            f"{self.name} not answering on {self.socket} after {timeout:.0f} s; log "
            f"{self.log_path}:\n{tail}"
        )

    def _watch(self) -> None:
        delay = 0.0
        while not self._stopping.wait(self.poll):
            with self._lock:
                proc = self.current
                if proc is None or self._stopping.is_set() or proc.returncode is None:
                    continue
                code = proc.returncode
                proc.stop(0.5)  # reaps it and closes its log
            # one that dies soon after its start again waits longer each time
            quick = time.monotonic() - self._started_at < QUICK_DEATH_SECONDS
            delay = min(max(delay * 2, 1.0), RESTART_BACKOFF_CAP) if quick else 0.0
            if self.on_restart is not None:
                self.on_restart(f"{self.name} (pid {proc.pid}) exited with code {code}; "
                                f"restarting it in {delay:.0f} s (log {self.log_path})")
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._spawn()
                self.restarts += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Stop restarting, then stop the current worker by PID (SIGTERM, then SIGKILL)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        with self._lock:
            for proc in self.incarnations:
                proc.stop(timeout)

    def alive_pids(self) -> list[int]:
        return sorted({pid for p in self.incarnations for pid in p.alive_pids()})


def stop_all(supervisors: list[WorkerSupervisor], timeout: float = 10.0) -> None:
    """Stop several workers at once (each may take seconds to unload torch)."""
    threads = [threading.Thread(target=s.stop, args=(timeout,), daemon=True) for s in supervisors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10.0)
