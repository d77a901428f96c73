"""The site worker: one long-lived process per site that runs the tasks its ClientApps relay.

Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message; without a worker each
one imports torch, LeRobot and HF datasets, rebuilds the policy and reopens the dataset (~12 s
per round on 2 CPU cores). The worker does that once and keeps, across rounds and runs, one
:class:`supernode.runtime.SiteRuntime` (policy on the site's device, processors, optimizer,
opened datasets); the ClientApp only relays (:mod:`supernode.relay`).

    python -m supernode.worker --socket /path/to/worker.sock [--parent-pid PID]

Started and restarted by ``zk0 supernode`` and ``zk0 cluster``
(:mod:`deploy.lab.worker_supervisor`).
It serves one task at a time, answers a failed task with an error naming the cause and goes
on, refuses peers of another uid and relays of other zk0 code, and exits on SIGTERM/SIGINT or
when ``--parent-pid`` is gone, removing its socket.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from types import FrameType

from supernode.channel import (
    KIND_ERROR,
    KIND_PING,
    KIND_REPLY,
    KIND_TASK,
    ChannelError,
    check_compatible,
    check_socket_path,
    code_fingerprint,
    code_root,
    peer_uid,
    private_dir,
    recv_frame,
    send_frame,
)


class WorkerStartError(RuntimeError):
    """The worker cannot serve on the socket it was given."""


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # psutil missing or /proc unreadable: a number for a log line only
        return -1.0


def bind(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``: folder 0700, socket 0600, stale file replaced.

    A socket file nobody answers on is a dead worker's and is removed; one somebody answers on
    belongs to a live worker, and this one refuses to start rather than steal its clients.
    """
    check_socket_path(path)
    private_dir(path.parent)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise WorkerStartError(f"another site worker is already serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is born 0600
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    path.chmod(0o600)
    sock.listen(8)
    return sock


class Worker:
    """Accepts relays on ``sock`` and runs each task with one kept SiteRuntime."""

    def __init__(self, sock: socket.socket, path: Path, parent_pid: int | None = None) -> None:
        from common.logs import get_logger
        from supernode.runtime import SiteRuntime

        self.sock = sock
        self.path = path
        self.parent_pid = parent_pid
        self.runtime = SiteRuntime()
        self.stop = threading.Event()
        self.tasks = 0
        self.log = get_logger("zk0.worker")

    def serve(self) -> None:
        self.sock.settimeout(1.0)  # wakes up to notice a stop or a dead parent
        self.log.info("worker_ready", socket=str(self.path), pid=os.getpid(),
                      code=code_fingerprint()[:12], rss_mb=round(_rss_mb()))
        while not self.stop.is_set() and self._parent_alive():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                self._serve_one(conn)

    def _parent_alive(self) -> bool:
        if self.parent_pid is None:
            return True
        if os.getppid() == self.parent_pid:
            return True
        self.log.info("worker_parent_gone", parent_pid=self.parent_pid)
        return False

    def _serve_one(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        if uid != os.getuid():  # the 0700 folder already keeps others out; root gets here
            self.log.warning("worker_refused_peer", uid=uid)
            return
        try:
            frame = recv_frame(conn)
        except (ChannelError, OSError) as err:
            self.log.warning("worker_bad_request", error=str(err))
            return
        problem = check_compatible(frame.header, mine="the site worker",
                                   peer="this run's ClientApp (the app bundle)")
        if problem is not None:
            self._reply_error(conn, (
                f"site worker refused the task: {problem}. Run the zk0 version this "
                "federation uses at this site (then restart `zk0 supernode`), or remove "
                "worker-socket from the node config to train in the ClientApp process"
            ))
            self.log.warning("worker_refused_version", reason=problem)
            return
        if frame.kind == KIND_PING:
            self._send(conn, KIND_REPLY, {"pid": os.getpid(), "tasks": self.tasks,
                                           "rss_mb": _rss_mb(), **self.runtime.describe()})
            return
        if frame.kind != KIND_TASK or frame.content is None:
            self._reply_error(conn, f"site worker: expected a task frame, got {frame.kind!r}")
            return
        self._run_task(conn, frame)

    def _run_task(self, conn: socket.socket, frame) -> None:
        from supernode import tasks

        h = frame.header
        start = time.perf_counter()
        self.log.info("worker_task_started", message_type=h.get("message_type"),
                      run_id=h.get("run_id"))
        try:
            reply = tasks.handle(str(h["message_type"]), frame.content, h["node_config"],
                                 h["run_config"], int(h["run_id"]), self.runtime)
        except Exception as err:
            self.log.error("worker_task_failed", message_type=h.get("message_type"),
                           error=f"{type(err).__name__}: {err}",
                           traceback=traceback.format_exc(limit=8))
            self._reply_error(conn, f"{type(err).__name__}: {err} (in the site worker, pid "
                                    f"{os.getpid()})")
            return
        finally:
            self.tasks += 1
        frame.content = None  # the request's arrays can go before the reply is written
        self._send(conn, KIND_REPLY, {}, reply)
        self.log.info("worker_task_done", message_type=h["message_type"],
                      run_id=h["run_id"], seconds=round(time.perf_counter() - start, 2),
                      rss_mb=round(_rss_mb()), **self.runtime.describe())

    def _send(self, conn: socket.socket, kind: str, header: dict, content=None) -> None:
        try:
            send_frame(conn, kind, header, content)
        except OSError as err:  # the relay went away (its task timed out, it was killed)
            self.log.warning("worker_reply_lost", error=str(err))

    def _reply_error(self, conn: socket.socket, reason: str) -> None:
        self._send(conn, KIND_ERROR, {"error": reason})


def preload() -> None:
    """Import the ML stack now, so the first round does not pay for it."""
    import lerobot.datasets.lerobot_dataset
    import lerobot.policies.factory
    import lerobot.policies.smolvla.modeling_smolvla  # noqa: F401

    import supernode.tasks  # noqa: F401  torch, codec, training, evaluation


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m supernode.worker", description=__doc__)
    p.add_argument("--socket", type=Path, required=True, help="Unix socket to serve on")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = p.parse_args(argv)
    path = args.socket.expanduser().absolute()
    preload()
    try:
        sock = bind(path)
    except (WorkerStartError, PermissionError, ValueError, OSError) as err:
        print(f"zk0 site worker: cannot serve on {path}: {err}", file=sys.stderr)
        return 2
    inode = path.stat().st_ino
    worker = Worker(sock, path, args.parent_pid)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        worker.serve()
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == inode:  # not a successor's socket
                path.unlink()
    worker.log.info("worker_stopped", tasks=worker.tasks, code_root=str(code_root()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
