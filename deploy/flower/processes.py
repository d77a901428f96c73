"""One child process, started in its own process group and always stopped by PID.

Why a process group: Flower's SuperExec starts ``flwr-serverapp`` / ``flwr-clientapp``
children with a plain ``Popen``, so they inherit our group. Signalling the group (and only
our group, never a process name) stops those grandchildren too, without touching a SuperLink
or SuperNode somebody else runs on the same machine.

Why SIGTERM then SIGKILL: a SuperLink that still has a ``flwr run --stream`` client attached
can hang in uvicorn's "Waiting for connections to close" after SIGTERM, so every ``stop`` ends
with SIGKILL after a timeout and never blocks forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import psutil

LineSink = Callable[[str], None]

_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)  # exited: no longer runs anything


class ProcessFailed(RuntimeError):
    """A managed process exited early or never became healthy (message has its log tail)."""


def _runs(proc: psutil.Process) -> bool:
    try:
        return proc.status() not in _GONE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, owned by someone else
        return True


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie no longer runs anything)."""
    try:
        return _runs(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in process group ``pgid``.

    By group, not by parent: a ``flwr-clientapp`` whose SuperExec already exited is re-parented
    to init but stays in our group, and the group is what :meth:`ManagedProcess.stop` signals.
    """
    members = []
    for proc in psutil.process_iter():
        try:
            in_group = os.getpgid(proc.pid) == pgid
        except (ProcessLookupError, PermissionError):
            continue
        if in_group and _runs(proc):
            members.append(proc.pid)
    return members


class ManagedProcess:
    """A child process with a log file, a health wait and a stop that cannot hang.

    stdout and stderr go to ``log_path`` (appended). With ``on_line`` each output line is also
    handed to that callback (e.g. printed with a prefix), so progress stays visible.
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        on_line: LineSink | None = None,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.on_line = on_line
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._reader: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the process in a new session (its own process group, pgid == pid)."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name} already started (pid {self._popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        stdout: int | IO[bytes] = subprocess.PIPE if self.on_line else self._log
        self._popen = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        if self.on_line:
            self._reader = threading.Thread(
                target=self._pump, name=f"{self.name}-output", daemon=True
            )
            self._reader.start()
        return self

    def _pump(self) -> None:
        assert self._popen is not None and self._popen.stdout is not None
        assert self._log is not None and self.on_line is not None
        for raw in iter(self._popen.stdout.readline, b""):
            self._log.write(raw)
            self._log.flush()
            with contextlib.suppress(Exception):  # a broken sink must not kill the pump
                self.on_line(raw.decode(errors="replace").rstrip("\n"))

    @property
    def started(self) -> bool:
        return self._popen is not None

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has exited (negative: killed by that signal)."""
        return None if self._popen is None else self._popen.poll()

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Exit code, or None if still running after ``timeout`` seconds."""
        if self._popen is None:
            return None
        try:
            code = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._finish_output()
        return code

    def wait_healthy(
        self,
        check: Callable[[], bool],
        timeout: float,
        *,
        interval: float = 0.25,
        what: str = "healthy",
    ) -> None:
        """Poll ``check`` until it is true; fail fast (with the log tail) if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.returncode
            if code is not None:
                self._finish_output()
                raise ProcessFailed(
                    f"{self.name} exited with code {code} before it was {what}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if check():
                    return
            except Exception:  # a failed probe is just "not yet"
                pass
            if time.monotonic() >= deadline:
                raise ProcessFailed(
                    f"{self.name} (pid {self.pid}) not {what} after {timeout:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the process group, SIGKILL whatever is left after ``timeout``.

        Also cleans up group members that outlived the leader (e.g. a ``flwr-clientapp``).
        Returns the leader's exit code. Safe to call twice or on a process never started.
        """
        if self._popen is None:
            return None
        pgid = self._popen.pid
        self._signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen.poll() is not None and not group_members(pgid):
                break
            time.sleep(0.1)
        else:
            self._signal_group(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(5.0)
            end = time.monotonic() + 5.0
            while group_members(pgid) and time.monotonic() < end:
                time.sleep(0.05)
        self._finish_output()
        return self._popen.poll()

    def _signal_group(self, pgid: int, sig: signal.Signals) -> None:
        # Only signal while something of ours is alive: a reaped, empty group id could be
        # reused by an unrelated session.
        if self.is_running() or group_members(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)

    def _finish_output(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5.0)
            if not self._reader.is_alive():
                self._reader = None
        if self._reader is None and self._log is not None:
            self._log.close()
            self._log = None

    def alive_pids(self) -> list[int]:
        """Live PIDs of this process and its group (empty once everything is gone)."""
        if self._popen is None:
            return []
        pids = set(group_members(self._popen.pid))
        if pid_alive(self._popen.pid):
            pids.add(self._popen.pid)
        return sorted(pids)

    # -- diagnostics -------------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        """Last ``lines`` lines of the log (for error messages)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64_000))
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self, since: int = 0) -> str:
        """The log from byte ``since`` on (:meth:`log_size` before a start: that run's part)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        """Bytes in the log so far (the log is appended to across starts)."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def __repr__(self) -> str:
        pid = self._popen.pid if self._popen else None
        return f"ManagedProcess({self.name!r}, pid={pid}, returncode={self.returncode})"

    def __enter__(self) -> Self:
        return self.start() if self._popen is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
