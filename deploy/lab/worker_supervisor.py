"""The site worker as a process role: a supervisor that starts it and restarts it if it dies.

``zk0 supernode`` (one lab) and ``zk0 cluster`` / :class:`deploy.cluster.local_cluster.LocalCluster`
(every site) start one :mod:`supernode.worker` per site next to its SuperNode, with the
SuperNode's runtime address, runtime CA and the site's SuperExec secret
(:func:`deploy.flower.commands.worker_cmd`): it is the site's executor of ClientApp tasks, in
place of ``flower-superexec``. It holds torch, LeRobot, the policy and the dataset; if it dies
(OOM, a crash, a kill) the message it was serving fails (Flower's task heartbeat: the SuperNode
replies "ClientApp stopped responding" within a minute), and :class:`WorkerSupervisor` starts a
new one, which takes the next message: the SuperNode keeps each message until a worker
acquires it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from deploy.flower.processes import ManagedProcess, ProcessFailed

RESTART_BACKOFF_CAP = 30.0  # seconds between restarts of a worker that keeps dying
QUICK_DEATH_SECONDS = 30.0  # a worker that dies sooner than this after its start is crash-looping
READY_EVENT = "worker_ready"  # what the worker logs once it can take messages


class WorkerSupervisor:
    """One site's worker process, restarted whenever it exits until :meth:`stop`.

    Every incarnation is a new :class:`ManagedProcess` (own process group, stopped by PID)
    appending to the same log. ``on_line`` gets the worker's output lines (console echo).
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        on_line: Callable[[str], None] | None = None,
        on_restart: Callable[[str], None] | None = None,
        poll: float = 0.5,
    ) -> None:
        """``cmd``: :func:`deploy.flower.commands.worker_cmd` (with ``parent_pid`` when the
        worker must exit with its launcher)."""
        self.name = name
        self.cmd = list(cmd)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.on_line = on_line
        self.on_restart = on_restart
        self.poll = poll
        self.incarnations: list[ManagedProcess] = []
        self.restarts = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._since = 0  # the current incarnation's part of the log starts here

    @property
    def current(self) -> ManagedProcess | None:
        return self.incarnations[-1] if self.incarnations else None

    @property
    def pid(self) -> int | None:
        proc = self.current
        return proc.pid if proc is not None and proc.is_running() else None

    def _spawn(self) -> ManagedProcess:
        proc = ManagedProcess(self.name, self.cmd, self.log_path, env=self.env, cwd=self.cwd,
                              on_line=self.on_line)
        self.incarnations.append(proc)
        self._since = proc.log_size()
        self._started_at = time.monotonic()
        return proc.start()

    def ready(self) -> bool:
        """The current incarnation runs and has said it takes messages (its ``worker_ready``
        line: torch, LeRobot and zk0's ClientApp imported, the SuperNode's address known)."""
        proc = self.current
        return (proc is not None and proc.returncode is None
                and READY_EVENT in proc.log_text(self._since))

    def start(self) -> WorkerSupervisor:
        """Start the worker and the thread that restarts it (returns at once)."""
        with self._lock:
            self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"{self.name}-supervisor",
                                        daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> None:
        """Block until the worker is ready (:meth:`ready`); ProcessFailed (with the log tail)
        if it exits or stays silent for ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            if self._stopping.is_set():
                break
            time.sleep(0.2)
        tail = self.current.log_tail() if self.current else "(never started)"
        raise ProcessFailed(
            f"{self.name} not ready after {timeout:.0f} s (no {READY_EVENT!r} in its log); log "
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
