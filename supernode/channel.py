"""The local channel between a per-message ClientApp (the relay) and the long-lived site worker.

Imported by the relay, so it loads nothing heavy: the standard library and the Flower record
types the ``flwr-clientapp`` process has already imported.

Transport: a Unix stream socket, created 0600 inside a folder that is 0700 and owned by the
site's user; the worker also checks each peer's uid (``SO_PEERCRED``). Only that user's
processes (and root) can connect.

Framing, one request and one reply per connection::

    b"ZK0W" | u64 header length | header (JSON) | blob 0 | blob 1 | ...

The header says what the frame is (task, reply, error, ping), the channel protocol version and
the sender's :func:`code_fingerprint`, the task's message type, run id and configs, and the
RecordDict's layout: for each record its key and kind, and for an ArrayRecord each array's
name, dtype, shape, stype and byte count. The blobs are each Array's own ``.npy`` bytes, sent
straight from the ``bytes`` Flower holds and received into one ``bytes`` object each (one copy
by the kernel, none by Python), and the ConfigRecords/MetricRecords as Flower's own protobuf
serialization. No pickle: a frame is data only.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

PROTOCOL = 1
MAGIC = b"ZK0W"
_LEN = struct.Struct("!Q")
MAX_HEADER_BYTES = 64 * 2**20  # a header lists names and shapes; anything larger is garbage
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, one for the terminating NUL
# What the worker executes for a task: the relay and the worker must run the same code.
CODE_PACKAGES = ("common", "supernode")

KIND_TASK, KIND_REPLY, KIND_ERROR, KIND_PING = "task", "reply", "error", "ping"


class ChannelError(RuntimeError):
    """The channel broke or a frame is malformed."""


class WorkerRefused(ChannelError):
    """The worker answered with an error: the task failed there or was refused."""


@cache
def code_fingerprint(root: Path | None = None) -> str:
    """SHA-256 over the site-side code (``common/`` and ``supernode/`` ``.py`` files, by path).

    The relay computes it over the code Flower installed from the run's app bundle (FAB), the
    worker over the zk0 it was started from: equal exactly when both would run the same code.
    """
    base = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    h = hashlib.sha256(f"zk0-worker-protocol-{PROTOCOL}".encode())
    for package in CODE_PACKAGES:
        for path in sorted((base / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            h.update(path.relative_to(base).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def code_root() -> Path:
    return Path(__file__).resolve().parent.parent


@dataclass
class Frame:
    """One decoded frame: the header's fields and, for tasks and replies, the RecordDict."""

    kind: str
    header: dict[str, Any]
    content: RecordDict | None = None
    blobs: list[bytes] = field(default_factory=list, repr=False)


# -- RecordDict <-> header + blobs ---------------------------------------------------------------


def _layout(content: RecordDict) -> tuple[list[dict[str, Any]], list[bytes]]:
    from flwr.common.serde import config_record_to_proto, metric_record_to_proto

    records: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays = []
            for name, array in record.items():
                arrays.append({"name": name, "dtype": array.dtype, "shape": list(array.shape),
                               "stype": array.stype, "size": len(array.data)})
                blobs.append(array.data)
            records.append({"key": key, "kind": "arrays", "arrays": arrays})
        elif isinstance(record, ConfigRecord):
            data = config_record_to_proto(record).SerializeToString()
            records.append({"key": key, "kind": "config", "size": len(data)})
            blobs.append(data)
        elif isinstance(record, MetricRecord):
            data = metric_record_to_proto(record).SerializeToString()
            records.append({"key": key, "kind": "metrics", "size": len(data)})
            blobs.append(data)
        else:
            raise ChannelError(f"record {key!r}: unsupported record type {type(record).__name__}")
    return records, blobs


def _blob_sizes(records: list[dict[str, Any]]) -> Iterator[int]:
    for record in records:
        if record["kind"] == "arrays":
            for array in record["arrays"]:
                yield int(array["size"])
        else:
            yield int(record["size"])


def _content(records: list[dict[str, Any]], blobs: list[bytes]) -> RecordDict:
    from flwr.common.serde import config_record_from_proto, metric_record_from_proto
    from flwr.proto.recorddict_pb2 import ConfigRecord as ProtoConfigRecord
    from flwr.proto.recorddict_pb2 import MetricRecord as ProtoMetricRecord

    content = RecordDict()
    it = iter(blobs)
    for record in records:
        kind = record["kind"]
        if kind == "arrays":
            content[record["key"]] = ArrayRecord({
                a["name"]: Array(str(a["dtype"]), tuple(int(d) for d in a["shape"]),
                                 str(a["stype"]), next(it))
                for a in record["arrays"]
            })
        elif kind == "config":
            content[record["key"]] = config_record_from_proto(
                ProtoConfigRecord.FromString(next(it)))
        elif kind == "metrics":
            content[record["key"]] = metric_record_from_proto(
                ProtoMetricRecord.FromString(next(it)))
        else:
            raise ChannelError(f"record {record.get('key')!r}: unknown kind {kind!r}")
    return content


# -- frames on a socket --------------------------------------------------------------------------


def send_frame(sock: socket.socket, kind: str, header: Mapping[str, Any] | None = None,
               content: RecordDict | None = None) -> None:
    """Write one frame: ``header`` (JSON-able) plus ``content``'s records, if any."""
    fields: dict[str, Any] = {"kind": kind, "protocol": PROTOCOL, "code": code_fingerprint(),
                              **(header or {})}
    blobs: list[bytes] = []
    if content is not None:
        fields["records"], blobs = _layout(content)
    head = json.dumps(fields).encode()
    sock.sendall(MAGIC + _LEN.pack(len(head)) + head)
    for blob in blobs:
        sock.sendall(blob)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes, into one bytes object when the kernel allows (MSG_WAITALL)."""
    if n == 0:
        return b""
    data = sock.recv(n, socket.MSG_WAITALL)
    if len(data) == n:
        return data
    parts, got = [data], len(data)
    while got < n:
        if not parts[-1]:
            raise ChannelError(f"connection closed after {got} of {n} bytes")
        chunk = sock.recv(min(n - got, 1 << 24))
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def recv_frame(sock: socket.socket) -> Frame:
    """Read one frame; :class:`ChannelError` if the peer closed or sent something else."""
    start = _recv_exact(sock, len(MAGIC) + _LEN.size)
    if start[: len(MAGIC)] != MAGIC:
        raise ChannelError("not a zk0 worker frame (bad magic)")
    (length,) = _LEN.unpack(start[len(MAGIC):])
    if length > MAX_HEADER_BYTES:
        raise ChannelError(f"frame header of {length} bytes (limit {MAX_HEADER_BYTES})")
    try:
        header = json.loads(_recv_exact(sock, length))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChannelError(f"frame header is not JSON: {err}") from None
    if not isinstance(header, dict) or "kind" not in header:
        raise ChannelError("frame header without a kind")
    records = header.get("records")
    try:
        blobs = [_recv_exact(sock, size) for size in _blob_sizes(records)] if records else []
        content = _content(records, blobs) if records is not None else None
    except (ChannelError, OSError):
        raise
    except Exception as err:  # KeyError, TypeError, protobuf's DecodeError, ...
        raise ChannelError(f"malformed frame layout: {type(err).__name__}: {err}") from None
    return Frame(str(header["kind"]), header, content, blobs)


# -- who may talk to whom ------------------------------------------------------------------------


def check_compatible(header: Mapping[str, Any], *, mine: str, peer: str) -> str | None:
    """Why a frame from ``peer`` cannot be served by ``mine`` (None: it can)."""
    if header.get("protocol") != PROTOCOL:
        return (f"{peer} speaks zk0 worker protocol {header.get('protocol')!r}, {mine} speaks "
                f"{PROTOCOL}")
    if header.get("code") != code_fingerprint():
        return (f"{peer} runs zk0 code {str(header.get('code'))[:12]}, {mine} runs "
                f"{code_fingerprint()[:12]} (sha256 of common/ and supernode/ in {code_root()})")
    return None


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (Linux ``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def check_socket_path(path: Path) -> None:
    """A socket path a Unix socket can have (sun_path is short), or ValueError saying so."""
    size = len(os.fsencode(str(path)))
    if size > SOCKET_PATH_MAX:
        raise ValueError(
            f"worker socket path {str(path)!r} is {size} bytes; Unix sockets allow "
            f"{SOCKET_PATH_MAX}: choose a shorter work dir or worker socket path"
        )


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter (created 0700; an existing one of ours is
    tightened to 0700; one owned by somebody else is refused)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(
            f"worker socket folder {path} belongs to uid {st.st_uid}, not to this user "
            f"({os.getuid()}): choose a folder of your own"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path
