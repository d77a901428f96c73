"""Pull the sites' replies without ever waiting on one site's upload.

A Flower 1.42 reply travels in two steps: the site pushes the reply message (its metadata and
the tree of its object ids), then each object (records, arrays, 5 MiB array chunks). The
SuperLink hands the message to the ServerApp as soon as the first step is done, and hands it
out once only. Flower's ``HttpGrid.pull_messages`` then fetches the objects of every message it
got with ``pull_objects``, retrying a missing one for up to two hours (``PULL_MAX_TIME``, 500
tries per object), one message after the other. A site revoked mid-upload (the SuperLink then
refuses its remaining objects), or whose box or link dies mid-upload, thus held the whole
ServerApp: ``round-timeout`` never fired, and the replies of the other sites pulled in the same
call were never processed.

Here the ServerApp pulls messages and objects itself, never blocking: each poll takes the new
reply messages and then, for every reply still uploading, pulls each of its objects that has
arrived. A reply is handed on when its last object is in. It fails that site's round, and
nothing else, when no new object of it arrives for ``upload-stall-timeout`` seconds (the site
was revoked, crashed or cut off: a live upload moves at least one 5 MiB chunk in that time),
when the SuperLink no longer has one of its objects, when its objects do not form a message, or
when the exchange's deadline (``round-timeout``) passes first.

Which objects to ask for: the SuperLink lists a message's objects in its own order (its SQL
index), not in the order the site pushes them, so the next object in the list may be the last
to arrive. So the polls sweep over the missing objects: each poll asks for the next ones not
yet asked for in this sweep (:data:`BATCH` at a time, two at once), pulls all that are there and
stops after :data:`MISSES_PER_POLL` missing ones; a new sweep starts when every missing object
was asked for. A stall is judged
only when every missing object was found missing after the last new one arrived, so neither the
listing order nor a poll spent pulling another site's large reply can fail a site that kept
uploading, objects are pulled while the site still uploads, and a stalled reply costs at most
that many small requests per poll. Polls keep the exchange's pace (:mod:`superlink.polling`)
while uploads run: a burst of requests would compete with the sites' uploads for the
SuperLink's SQLite lock and its CPU, and a site whose upload waits out that lock loses its
reply. A reply given up on is confirmed to the SuperLink as
received, which deletes what it holds of it.

Flower has no public API for this (``Grid`` offers only whole-message pulls), so
:class:`RuntimeObjects` uses Flower internals: ``HttpGrid``'s runtime client and node, the
runtime protobuf requests, and the inflatable-object helpers that ``HttpGrid.pull_messages``
itself uses. They are all in that one class, and ``tests/test_reply_uploads.py`` pins them to
the installed Flower (a changed ``HttpGrid.pull_messages`` fails the test). In-process grids
(:mod:`harness.inprocess_grid`) deliver whole messages and never wait: :class:`WholeMessages`
passes them through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from flwr.app import Message
from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest
from flwr.proto.runtime_pb2 import PullAppMessagesRequest
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectPullError,
    ObjectUnavailableError,
    inflate_object_from_contents,
)
from flwr.superlink.grid.http_grid import HttpGrid

from common.logs import get_logger

log = get_logger("zk0.superlink")

DEFAULT_STALL_TIMEOUT = 120.0
#: Objects found missing after which one poll stops probing an upload (module doc): a sweep of
#: a SmolVLA-size reply (~700 objects) then takes ~90 polls, inside the default stall timeout.
MISSES_PER_POLL = 8
#: Objects asked for at once, by :data:`_PULLS` (Flower's ``pull_objects`` also pulls 2 at once).
BATCH = 8
_PULLS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="zk0-reply-pull")


class ObjectGone(Exception):
    """The SuperLink does not have an object of a reply (it will never arrive)."""


@dataclass(frozen=True)
class ArrivedReply:
    """A reply message as the SuperLink first hands it over: its ids, not yet its objects."""

    message_id: str
    reply_to: str  # the id of the instruction it answers
    object_ids: tuple[str, ...]  # every object of the message, children before parents


class ObjectSource(Protocol):
    """Where replies and their objects come from (the SuperLink's runtime API)."""

    def pull_messages(self, message_ids: list[str]) -> list[ArrivedReply]: ...

    def pull_object(self, object_id: str) -> bytes | None:
        """The object's bytes; None while it has not arrived; :class:`ObjectGone` if the
        SuperLink does not have it."""
        ...

    def confirm(self, message_id: str) -> None:
        """Tell the SuperLink the message is done with (it deletes the message's objects)."""
        ...

    def inflate(self, message_id: str, contents: dict[str, bytes]) -> Message: ...


class RuntimeObjects:
    """:class:`ObjectSource` over an ``HttpGrid``'s runtime client: the Flower internals,
    used as ``HttpGrid.pull_messages`` (flwr 1.42) uses them."""

    def __init__(self, grid: HttpGrid) -> None:
        self.node = grid.node
        self.run_id = grid.run.run_id
        self._client = grid._runtime_client  # Flower offers no public per-object pull
        self._pull = make_pull_object_fn_protobuf(self._client.PullObject, self.node,
                                                  self.run_id)

    def pull_messages(self, message_ids: list[str]) -> list[ArrivedReply]:
        res = self._client.PullMessages(PullAppMessagesRequest(message_ids=message_ids))
        return [
            ArrivedReply(
                message_id=proto.metadata.message_id,
                reply_to=proto.metadata.reply_to_message_id,
                object_ids=tuple(t.object_id for t in iterate_object_tree(tree)),
            )
            for proto, tree in zip(res.messages_list, res.message_object_trees, strict=True)
        ]

    def pull_object(self, object_id: str) -> bytes | None:
        try:
            return self._pull(object_id)
        except ObjectUnavailableError:
            return None
        except ObjectPullError as err:
            raise ObjectGone(str(err)) from None

    def confirm(self, message_id: str) -> None:
        self._client.ConfirmMessageReceived(ConfirmMessageReceivedRequest(
            node=self.node, run_id=self.run_id, message_object_id=message_id))

    def inflate(self, message_id: str, contents: dict[str, bytes]) -> Message:
        return inflate_message(message_id, contents)


def inflate_message(message_id: str, contents: dict[str, bytes]) -> Message:
    """The message from its objects' bytes, as ``HttpGrid.pull_messages`` rebuilds it."""
    message = inflate_object_from_contents(message_id, contents)
    if not isinstance(message, Message):
        raise TypeError(f"object {message_id} is a {type(message).__name__}, not a Message")
    message.metadata.__dict__["_message_id"] = message_id
    return message


@dataclass(frozen=True)
class FailedUpload:
    """A reply whose objects did not all arrive: that site's round fails with ``reason``."""

    reply_to: str
    reason: str


@dataclass
class Upload:
    """One reply whose objects are being pulled."""

    arrived: ArrivedReply
    started: float  # monotonic time the message arrived
    progressed: float  # monotonic time of the last new object
    contents: dict[str, bytes] = field(default_factory=dict)
    absent: dict[str, float] = field(default_factory=dict)  # missing -> when, in this sweep

    @property
    def missing(self) -> list[str]:
        return [o for o in self.arrived.object_ids if o not in self.contents]

    def progress(self) -> str:
        got = sum(len(v) for v in self.contents.values())
        return f"{len(self.contents)}/{len(self.arrived.object_ids)} parts ({got} bytes)"


@dataclass
class Pulled:
    """What one poll produced."""

    replies: list[Message] = field(default_factory=list)
    failed: list[FailedUpload] = field(default_factory=list)


class ReplyPuller(Protocol):
    """What :func:`superlink.exchange.exchange` pulls replies with."""

    def pull(self, message_ids: Iterable[str]) -> Pulled: ...

    def abandon(self, reason: str) -> list[FailedUpload]: ...


class WholeMessages:
    """A grid whose ``pull_messages`` returns whole replies at once (in-process grids)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def pull(self, message_ids: Iterable[str]) -> Pulled:
        return Pulled(replies=list(self.grid.pull_messages(list(message_ids))))

    def abandon(self, reason: str) -> list[FailedUpload]:
        return []


class BoundedUploads:
    """Replies pulled object by object, each upload bounded (module doc)."""

    def __init__(self, source: ObjectSource, stall_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not stall_timeout > 0:
            raise ValueError(f"upload stall timeout must be > 0, got {stall_timeout}")
        self.source = source
        self.stall_timeout = stall_timeout
        self.clock = clock
        self.uploads: dict[str, Upload] = {}  # by the id of the instruction it answers

    def pull(self, message_ids: Iterable[str]) -> Pulled:
        pulled = Pulled()
        wanted = [m for m in message_ids if m not in self.uploads]
        if wanted:
            arrived = self.source.pull_messages(wanted)
            now = self.clock()
            for reply in arrived:
                self.uploads[reply.reply_to] = Upload(reply, now, now)
        for upload in list(self.uploads.values()):
            self._advance(upload, pulled)
        return pulled

    def _advance(self, upload: Upload, pulled: Pulled) -> None:
        misses = 0
        asking = [o for o in upload.missing if o not in upload.absent]
        try:
            for start in range(0, len(asking), BATCH):
                batch = asking[start:start + BATCH]
                for object_id, content in zip(batch, _PULLS.map(self.source.pull_object, batch),
                                              strict=True):
                    if content is None:
                        upload.absent[object_id] = self.clock()
                        misses += 1
                        continue
                    upload.contents[object_id] = content
                    upload.progressed = self.clock()
                if misses >= MISSES_PER_POLL:
                    break
        except ObjectGone as err:
            pulled.failed.append(self._give_up(
                upload, f"the SuperLink does not have part of the reply ({err})"))
            return
        missing = upload.missing
        if not missing:
            self._complete(upload, pulled)
            return
        if any(o not in upload.absent for o in missing):
            return  # this sweep goes on at the next poll
        idle = self.clock() - upload.progressed
        if idle >= self.stall_timeout and all(
            upload.absent[o] >= upload.progressed for o in missing
        ):
            pulled.failed.append(self._give_up(
                upload, f"no new part for {idle:.0f} s (upload-stall-timeout="
                        f"{self.stall_timeout:g}s): the site was revoked, stopped or cut off "
                        "mid-upload"))
        else:
            upload.absent.clear()  # the next sweep

    def _complete(self, upload: Upload, pulled: Pulled) -> None:
        message_id = upload.arrived.message_id
        self.source.confirm(message_id)  # on a transient error the next poll comes back here
        del self.uploads[upload.arrived.reply_to]
        try:
            pulled.replies.append(self.source.inflate(message_id, upload.contents))
        except Exception as err:  # the site's bytes: a bad reply fails its site, not the run
            pulled.failed.append(FailedUpload(
                upload.arrived.reply_to,
                f"the reply's {len(upload.arrived.object_ids)} parts do not form a message "
                f"({type(err).__name__}: {str(err)[:200]})"))

    def _give_up(self, upload: Upload, why: str) -> FailedUpload:
        self.uploads.pop(upload.arrived.reply_to, None)
        reason = (f"reply upload incomplete after {self.clock() - upload.started:.0f} s, "
                  f"{upload.progress()}: {why}")
        try:  # the SuperLink deletes what it holds of the reply
            self.source.confirm(upload.arrived.message_id)
        except Exception as err:  # cleanup only: the failure is recorded either way
            log.warning("reply_upload_not_freed", reply_to=upload.arrived.reply_to,
                        error=f"{type(err).__name__}: {str(err)[:200]}")
        return FailedUpload(upload.arrived.reply_to, reason)

    def abandon(self, reason: str) -> list[FailedUpload]:
        """Give up every upload still running (the exchange's deadline passed)."""
        return [self._give_up(u, reason) for u in list(self.uploads.values())]


def reply_puller(grid: Grid, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> ReplyPuller:
    """Bounded object-by-object pulls over a SuperLink; whole messages from any other grid."""
    if isinstance(grid, HttpGrid):
        return BoundedUploads(RuntimeObjects(grid), stall_timeout)
    return WholeMessages(grid)
