"""The ClientApp side of the site worker: hand one message to the worker, return its reply.

Runs inside Flower's per-message ``flwr-clientapp`` process when the node config names a
``worker-socket``; imports only the standard library and :mod:`supernode.channel`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import RecordDict

from supernode.channel import (
    KIND_ERROR,
    KIND_PING,
    KIND_REPLY,
    KIND_TASK,
    ChannelError,
    WorkerRefused,
    check_compatible,
    recv_frame,
    send_frame,
)

# A worker that died is restarted by the site's launcher (imports: seconds on a GPU box, up to
# a minute or more on a busy small machine): a message arriving meanwhile waits for it rather
# than failing the round at once.
CONNECT_WAIT_SECONDS = 180.0


def connect(path: str | Path, wait: float = CONNECT_WAIT_SECONDS) -> socket.socket:
    """A connection to the worker at ``path``, retried for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as err:
            sock.close()
            if time.monotonic() >= deadline:
                raise ChannelError(
                    f"site worker not reachable at {path} after {wait:.0f} s ({err}); it is "
                    "started by `zk0 supernode` (see its worker log), or remove worker-socket "
                    "from the node config to train in the ClientApp process"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        except BaseException:
            sock.close()
            raise


def _exchange(path: str | Path, kind: str, header: Mapping[str, Any],
              content: RecordDict | None, wait: float):
    with connect(path, wait) as sock:
        try:
            send_frame(sock, kind, header, content)
            reply = recv_frame(sock)
        except (ChannelError, OSError) as err:
            raise ChannelError(
                f"site worker at {path} closed the connection during the task ({err}): it "
                "died or was stopped; its launcher restarts it for the next message"
            ) from None
    if reply.kind == KIND_ERROR:
        raise WorkerRefused(str(reply.header.get("error", "unknown error")))
    problem = check_compatible(reply.header, mine="this ClientApp", peer="the site worker")
    if problem is not None:
        raise WorkerRefused(f"site worker at {path}: {problem}")
    return reply


def relay(path: str | Path, message_type: str, content: RecordDict,
          node_config: Mapping[str, Any], run_config: Mapping[str, Any], run_id: int,
          wait: float = CONNECT_WAIT_SECONDS) -> RecordDict:
    """Run one task in the worker and return its reply's content.

    Raises :class:`WorkerRefused` with the worker's reason when the task failed there or the
    worker refused it (another zk0 version), :class:`ChannelError` when the worker is gone.
    """
    header = {"message_type": message_type, "run_id": int(run_id),
              "node_config": dict(node_config), "run_config": dict(run_config)}
    reply = _exchange(path, KIND_TASK, header, content, wait)
    if reply.kind != KIND_REPLY or reply.content is None:
        raise ChannelError(f"site worker at {path} answered a {reply.kind!r} frame to a task")
    return reply.content


def ping(path: str | Path, wait: float = 0.0) -> dict[str, Any]:
    """The worker's self-description (pid, code, what is loaded); raises if it cannot serve."""
    return _exchange(path, KIND_PING, {}, None, wait).header
