"""The site worker: the long-lived process that runs this site's ClientApp messages itself.

Flower 1.42 runs a ClientApp by starting a new ``flwr-clientapp`` process for every message (its
SuperExec's subprocess executor; its warm executors are Kubernetes-only and not for ClientApps,
upstream issue #3670). Each one imports torch, LeRobot and HF datasets, builds the policy and
opens the dataset again (seconds per round on a CPU, the backbone uploaded to the GPU again on a
GPU box). The site worker is this site's task executor instead: it speaks Flower's own SuperExec
and ClientAppIo protocol to the site's SuperNode, as ``flower-superexec`` and ``flwr-clientapp``
do together, but handles each message in its own process, where one kept
:class:`supernode.runtime.SiteRuntime` holds torch, LeRobot, the policy on the site's device,
the optimizer and the opened datasets across rounds and runs. No relay, no second channel: the
SuperNode's runtime API is the only way in.

    python -m supernode.worker --runtime-api-address 127.0.0.1:9094 \\
        --root-certificates <runtime CA> --superexec-auth-secret-file <secret> [--parent-pid P]

Each message, over the SuperNode's runtime API (TLS on loopback):

1. ``AcquireTask`` signed with the site's SuperExec secret (HMAC; the file is 0600, the site's
   user's): without it the SuperNode refuses (401), so no other local user gets the site's tasks
   or their tokens. zk0's SuperNode holds this call until a task exists
   (:mod:`deploy.flower.supernode_waits`), so a message reaches the worker as soon as it is
   stored; a stock SuperNode answers at once and the worker polls every ``--idle-poll`` s.
2. With the task's token: ``PullTaskInput`` (context, run, FAB), ``PullMessages`` and the
   message's objects, heartbeats while the message runs (Flower's own client functions).
3. The FAB's site code must be this worker's own (:mod:`supernode.app_code`), else the reply is
   an error naming both versions; the worker runs its own, already imported, zk0.
4. zk0's ClientApp (``supernode.client_app.app``, with its signature mod) handles the message.
5. ``PushMessages`` and the reply's objects, then ``PushTaskOutput`` (context and status).

Bounded waits: every call has a connect and a read timeout (``--peer-timeout``; the held
``AcquireTask`` ``--acquire-timeout``), so a stalled SuperNode costs a timeout and a retry, never
a hang. Failures: a message that raises gets an error reply with the reason and the worker goes
on; an unreachable SuperNode is retried with backoff; a refused secret (401) stops the worker
with the reason. Stopping: SIGTERM/SIGINT/SIGHUP interrupt a waiting ``AcquireTask`` or the
message being computed at once (that message gets an error reply saying so; a reply already
being pushed is finished first), and the worker exits when ``--parent-pid`` is gone. A worker
killed outright leaves its message to Flower's task heartbeat: the SuperNode replies "ClientApp
stopped responding" within a minute, and the launcher starts a new worker.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

#: What the worker's log calls its per-message timestamps (Unix time), in the order they happen.
STAMPS = ("acquired_at", "input_at", "handled_at", "pushed_at", "done_at")


class WorkerStopping(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT/SIGHUP while the worker may be interrupted."""


class SecretRefused(RuntimeError):
    """The SuperNode refused this worker's SuperExec secret (HTTP 401/403)."""


@dataclass(frozen=True)
class WorkerOptions:
    """How the worker reaches its SuperNode and how long it waits for it."""

    runtime_api_address: str
    root_certificates: Path
    secret_file: Path
    peer_timeout: float = 60.0  # read timeout of every call a message makes
    acquire_timeout: float = 60.0  # read timeout of AcquireTask (longer than the SuperNode holds)
    idle_poll: float = 0.25  # between AcquireTask calls a SuperNode answered at once
    connect_timeout: float = 5.0
    parent_pid: int | None = None

    def __post_init__(self) -> None:
        for name in ("peer_timeout", "acquire_timeout", "idle_poll", "connect_timeout"):
            value = getattr(self, name)
            if not 0 < value < 3600:
                raise ValueError(f"--{name.replace('_', '-')} {value}: expected 0 < s < 3600")


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # psutil missing or /proc unreadable: a number for a log line only
        return -1.0


def _tls_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    return context


@dataclass
class Worker:
    """Acquires this site's ClientApp tasks from its SuperNode and runs each in this process."""

    options: WorkerOptions
    stop: threading.Event = field(default_factory=threading.Event)
    tasks: int = 0
    interruptible: bool = False

    def __post_init__(self) -> None:
        from common.logs import get_logger
        from supernode.app_code import CodeCheck
        from supernode.runtime import keep_loaded

        self.log = get_logger("zk0.worker")
        self.runtime = keep_loaded()
        self.code = CodeCheck()
        from flwr.supercore.auth import load_superexec_auth_secret

        # as the SuperNode reads it (exact bytes): ValueError names the file if unusable
        self.secret = load_superexec_auth_secret(str(self.options.secret_file)) or b""
        self._tls = _tls_context(self.options.root_certificates)

    # -- clients -------------------------------------------------------------------------------

    def _client(self, interceptors: list, read_timeout: float):
        import httpx
        from flwr.supercore.runtime import RuntimeHttpClient

        return RuntimeHttpClient(
            f"https://{self.options.runtime_api_address}",
            interceptors=interceptors,
            verify=self._tls,
            timeout=httpx.Timeout(read_timeout, connect=self.options.connect_timeout),  # type: ignore[arg-type]
            retry_invoker=_bounded_retries(self.options.peer_timeout),
        )

    def _acquire_client(self):
        from flwr.supercore.interceptors import (
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )

        return self._client([
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
            SuperExecAuthHttpInterceptor(master_secret=self.secret,
                                         protected_methods={"/flwr.proto.Runtime/AcquireTask"}),
        ], self.options.acquire_timeout)

    def _task_client(self, token: str):
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
        )

        return self._client([RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                             RuntimeTokenHttpInterceptor(token)], self.options.peer_timeout)

    # -- the loop ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _may_interrupt(self) -> Iterator[None]:
        """A stop signal raises :class:`WorkerStopping` here (and only here)."""
        self.interruptible = True
        try:
            if self.stop.is_set():
                raise WorkerStopping("stop requested")
            yield
        finally:
            self.interruptible = False

    def serve(self) -> None:
        """Acquire and run tasks until stopped."""
        import httpx
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        from supernode.app_code import code_fingerprint

        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        client = self._acquire_client()
        self.log.info("worker_ready", runtime_api=self.options.runtime_api_address,
                      pid=os.getpid(), code=code_fingerprint()[:12], rss_mb=round(_rss_mb()))
        failures = 0
        try:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    with self._may_interrupt():
                        res = client.AcquireTask(request)
                    failures = 0
                except WorkerStopping:
                    return
                except httpx.HTTPStatusError as err:
                    if err.response.status_code in (401, 403):
                        raise SecretRefused(
                            f"the SuperNode at {self.options.runtime_api_address} refused this "
                            f"worker's SuperExec secret ({self.options.secret_file}): HTTP "
                            f"{err.response.status_code}; the SuperNode and the worker must be "
                            "started with the same --superexec-auth-secret-file"
                        ) from None
                    failures = self._unreachable(err, failures)
                    continue
                except httpx.TransportError as err:
                    failures = self._unreachable(err, failures)
                    continue
                if res.HasField("task") and res.token:
                    self.run_task(res.token, time.time())
                elif (left := self.options.idle_poll - (time.monotonic() - start)) > 0:
                    self.stop.wait(left)  # a SuperNode that does not hold AcquireTask
        finally:
            client.close()

    def _unreachable(self, err: Exception, failures: int) -> int:
        delay = min(0.5 * 2**failures, 2.0)  # a local peer: retrying costs nothing
        if failures == 0 or failures % 10 == 0:
            self.log.warning("supernode_unreachable", runtime_api=self.options.runtime_api_address,
                             error=f"{type(err).__name__}: {err}"[:300], retry_in=delay)
        self.stop.wait(delay)
        return failures + 1

    # -- one task ------------------------------------------------------------------------------

    def run_task(self, token: str, acquired_at: float) -> None:
        """Run one acquired ClientApp task the way ``flwr-clientapp`` does, in this process."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supernode.runtime.run_clientapp import (
            pull_task_input,
            push_message,
            push_task_output,
        )

        from supernode.app_code import AppCodeMismatch
        from supernode.client_app import app

        stamps: dict[str, float] = {"acquired_at": acquired_at}
        client = self._task_client(token)
        lost = threading.Event()  # the SuperNode gave up on the task (its token expired)
        heartbeat = HeartbeatSender(_heartbeat_fn(client, lost))
        heartbeat.start()
        message = context = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            # Not interruptible: once claimed, the message must get a reply (a SuperNode whose
            # message nobody pulled waits for a reply forever).
            message, context, _run, fab = pull_task_input(client)
            stamps["input_at"] = time.time()
            self.log.info("task_started", message_type=message.metadata.message_type,
                          run_id=message.metadata.run_id, message_id=message.metadata.message_id)
            try:
                with self._may_interrupt():
                    self.code.check(fab.hash_str, fab.content)
                    reply = app(message=message, context=context)
                    stamps["handled_at"] = time.time()
                status, details = SubStatus.COMPLETED, ""
            except AppCodeMismatch as err:
                details = str(err)
                reply = Message(Error(ErrorCode.LOAD_CLIENT_APP_EXCEPTION, details),
                                reply_to=message)
            except WorkerStopping:
                details = "the site worker was stopped (SIGTERM) while handling this message"
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, details),
                                reply_to=message)
                self.log.warning("task_interrupted", reason=details)
            except Exception as err:  # the message failed; the worker goes on
                details = f"{type(err)}:<'{err}'>"  # Flower's own reason format
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, details),
                                reply_to=message)
                self.log.error("task_failed", error=f"{type(err).__name__}: {err}"[:500],
                               traceback=traceback.format_exc(limit=8))
            if status != SubStatus.COMPLETED:
                self.runtime.forget_training()
            if not lost.is_set():
                push_message(client, reply, context)
                stamps["pushed_at"] = time.time()
        except Exception as err:  # the SuperNode went away or timed out mid-message
            status, details = SubStatus.FAILED, f"reply not delivered: {type(err).__name__}: {err}"
            self.log.error("reply_not_delivered", error=details[:500])
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            with contextlib.suppress(Exception):
                push_task_output(client, context, status, details)
            client.close()
            self.tasks += 1
        stamps["done_at"] = time.time()
        self._log_done(message, status, details, stamps, lost.is_set())

    def _log_done(self, message: Any, status: str, details: str, stamps: dict[str, float],
                  lost: bool) -> None:
        meta = message.metadata if message is not None else None
        fields: dict[str, Any] = {
            "message_type": meta.message_type if meta else None,
            "run_id": meta.run_id if meta else None,
            "message_id": meta.message_id if meta else None,
            "status": status,
            "seconds": round(stamps["done_at"] - stamps["acquired_at"], 3),
            "tasks": self.tasks,
            "rss_mb": round(_rss_mb()),
            **{k: f"{v:.6f}" for k, v in stamps.items()},
            **self.runtime.describe(),
        }
        if lost:
            fields["lost"] = "the SuperNode gave up on this task (its heartbeat expired)"
        if details:
            fields["details"] = details[:300]
        self.log.info("task_done", **fields)


def _heartbeat_fn(client: Any, lost: threading.Event) -> Callable[[], bool]:
    """Flower's task heartbeat, except that a refused one marks the task lost instead of
    sending SIGINT to the whole process (what ``flwr-clientapp``, one message per process,
    does)."""
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            res = client.SendTaskHeartbeat(request)
        except httpx.TransportError:
            return False
        except httpx.HTTPStatusError as err:
            if err.response.status_code in (503, 504):
                return False
            lost.set()
            return True
        if not res.success:
            lost.set()
        return True

    return beat


def _bounded_retries(max_time: float):
    """A few quick retries of a call that failed in transport (never of an HTTP answer)."""
    import httpx
    from flwr.supercore.retry import RetryInvoker, exponential

    return RetryInvoker(lambda: exponential(base_delay=0.1, max_delay=2),
                        httpx.TransportError, max_tries=3, max_time=max_time)


def preload() -> None:
    """Import the ML stack and zk0's ClientApp now, so the first message does not pay for it."""
    import lerobot.datasets.lerobot_dataset
    import lerobot.policies.factory
    import lerobot.policies.smolvla.modeling_smolvla  # noqa: F401

    import supernode.client_app
    import supernode.tasks  # noqa: F401  torch, codec, training, evaluation


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    """SIGTERM to this process once ``parent_pid`` is no longer its parent (it died)."""
    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def parse_args(argv: list[str] | None = None) -> WorkerOptions:
    p = argparse.ArgumentParser(prog="python -m supernode.worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime-api-address", required=True,
                   help="the SuperNode's runtime API, host:port")
    p.add_argument("--root-certificates", type=Path, required=True,
                   help="CA certificate of the SuperNode's runtime API (PEM)")
    p.add_argument("--superexec-auth-secret-file", type=Path, required=True,
                   help="the SuperExec secret the SuperNode was started with")
    p.add_argument("--peer-timeout", type=float, default=WorkerOptions.peer_timeout,
                   help="seconds a call to the SuperNode may take before it counts as stalled")
    p.add_argument("--acquire-timeout", type=float, default=WorkerOptions.acquire_timeout,
                   help="read timeout of AcquireTask, which the SuperNode holds until a task "
                        "exists (must exceed its hold)")
    p.add_argument("--idle-poll", type=float, default=WorkerOptions.idle_poll,
                   help="seconds between AcquireTask calls a SuperNode answers at once")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    a = p.parse_args(argv)
    try:
        return WorkerOptions(a.runtime_api_address, a.root_certificates.expanduser().absolute(),
                             a.superexec_auth_secret_file.expanduser().absolute(),
                             peer_timeout=a.peer_timeout, acquire_timeout=a.acquire_timeout,
                             idle_poll=a.idle_poll, parent_pid=a.parent_pid)
    except ValueError as err:
        p.error(str(err))
        raise  # unreachable: p.error exits


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    for path, what in ((options.root_certificates, "--root-certificates"),
                       (options.secret_file, "--superexec-auth-secret-file")):
        if not path.is_file():
            print(f"zk0 site worker: {what} {path}: file not found", file=sys.stderr)
            return 2
    preload()
    try:
        worker = Worker(options)
    except ValueError as err:
        print(f"zk0 site worker: {err}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.stop.set()
        if worker.interruptible:
            worker.interruptible = False  # once
            raise WorkerStopping(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if options.parent_pid is not None:
        _watch_parent(options.parent_pid, worker.stop)
    try:
        worker.serve()
    except SecretRefused as err:
        worker.log.error("worker_refused", reason=str(err))
        return 3
    worker.log.info("worker_stopped", tasks=worker.tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
