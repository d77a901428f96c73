"""Send messages to sites and collect replies, logging each site's reply as it arrives.

Flower's ``Grid.send_and_receive`` blocks silently until every reply is in or the timeout
passes. A lab coordinator watching a round that takes an hour wants to see which sites have
answered; this loop uses the same ``push_messages``/``pull_messages`` primitives and reports
every reply and every site that never answered.

Four rules keep a round's work inside the round:

- **Messages expire with the round.** Flower gives a message a 12-hour TTL by default; a site
  that picks it up late then trains a round nobody waits for. Just before pushing, each
  message's TTL is set so that it expires when this exchange stops waiting: the SuperLink then
  neither hands it out nor accepts a reply to it after that.
- **Only this exchange's replies count.** Replies are pulled by the ids of this exchange's
  messages; anything else a grid hands back (a reply to an earlier round's message) is kept
  apart as ``stale`` and never reaches aggregation.
- **No site's upload holds the exchange.** Replies are pulled object by object
  (:mod:`superlink.reply_uploads`): a reply whose upload stops (``upload-stall-timeout``) or is
  not complete at the deadline fails that site only (``incomplete``), while every other reply
  is taken as it completes.
- **Transient SuperLink errors are retried, bugs are not.** With ``--database`` Flower 1.42 keeps
  messages in SQLite with a 5 s lock timeout, and while sites upload hundreds of MB a push or a
  poll can fail with HTTP 500 "database is locked"; a restarting SuperLink refuses connections
  for a while. Flower's own loop lets that kill the ServerApp (and the run). Here pushes and
  pulls alike are retried with exponential backoff when :func:`is_transient` says the error is
  the SuperLink's or the network's; any other exception (a ``TypeError``, ``ValueError``, an
  HTTP 4xx: a programming or configuration error) is raised at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from common.logs import get_logger
from common.packing import PackingError, pack, unpack
from superlink.polling import IdleBackoff
from superlink.reply_uploads import DEFAULT_STALL_TIMEOUT, FailedUpload, reply_puller

POLL_SECONDS = 2.0  # base of the retry backoff after a failed push/poll
MAX_POLL_FAILURES = 20  # consecutive failed pushes/polls before the ServerApp gives up
BACKOFF_CAP = 30.0  # seconds between retries, at most
#: HTTP statuses a SuperLink answers while busy, restarting or behind a proxy that is: worth
#: another try. Every other status (400 bad request, 401/403 refused, 404, 413 too large, ...)
#: says the request itself is wrong and will be wrong the next time too.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

log = get_logger("zk0.superlink")


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is a passing SuperLink/network failure (retry) rather than a bug."""
    if isinstance(err, httpx.HTTPStatusError):
        return err.response.status_code in TRANSIENT_STATUS
    # connect/read/write errors, timeouts, dropped connections (httpx's and the socket's)
    return isinstance(err, httpx.TransportError | ConnectionError | TimeoutError)


@dataclass
class Backoff:
    """Consecutive failures of one kind of call, and the wait before the next try."""

    what: str  # "push" | "pull" | "list_nodes"
    failures: int = 0

    def failed(self, err: Exception) -> None:
        """Re-raise ``err`` unless it is transient and the retries are not used up; else wait."""
        if not is_transient(err):
            raise err
        self.failures += 1
        if self.failures > MAX_POLL_FAILURES:
            raise err
        wait = min(POLL_SECONDS * 2**self.failures, BACKOFF_CAP)
        log.warning(f"{self.what}_failed", attempt=self.failures, retry_in=wait,
                    error=f"{type(err).__name__}: {str(err)[:200]}")
        time.sleep(wait)

    def succeeded(self) -> None:
        self.failures = 0


def with_retries[T](call: Callable[[], T], what: str) -> T:
    """``call()``, retried with backoff while it fails transiently (see :func:`is_transient`)."""
    backoff = Backoff(what)
    while True:
        try:
            return call()
        except Exception as err:  # the grid raises what its HTTP client raised
            backoff.failed(err)


@dataclass
class Exchange:
    replies: list[Message]
    missing: list[int]  # node ids that never replied before the timeout (or were never sent to)
    routes: dict[str, int]  # message id -> destination node id
    seconds: float
    stale: list[Message] = field(default_factory=list)  # replies to other exchanges' messages
    # node id -> why its reply's upload did not complete (stalled, gone, or cut by the deadline)
    incomplete: dict[int, str] = field(default_factory=dict)
    # when (Unix time) the push began and ended, and each reply arrived (by its node id)
    sent_at: float = 0.0
    pushed_at: float = 0.0
    arrived_at: dict[int, float] = field(default_factory=dict)


def expire_with(messages: list[Message], deadline_wall: float) -> None:
    """Let every message expire at ``deadline_wall`` (Unix time): the end of the exchange."""
    for msg in messages:
        msg.metadata.ttl = max(deadline_wall - msg.metadata.created_at, 1e-3)


def _unpacked(reply: Message, instruction: Message) -> Message:
    """The reply with its arrays unpacked (:mod:`common.packing`); a malformed one becomes an
    error reply of that site, naming the problem."""
    if reply.has_error():
        return reply
    try:
        reply.content = unpack(reply.content)
    except PackingError as err:
        return Message(Error(ErrorCode.UNKNOWN, f"malformed reply payload: {err}"),
                       reply_to=instruction)
    return reply


def exchange(
    grid: Grid,
    messages: list[Message],
    timeout: float | None,
    on_reply: Callable[[Message, int], None] | None = None,
    poll: IdleBackoff | None = None,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
) -> Exchange:
    start = time.monotonic()
    sent_at = time.time()
    if timeout:
        expire_with(messages, time.time() + timeout)
    memo: dict = {}  # the broadcast's shared weights packed once
    for msg in messages:  # one array on the wire instead of one per tensor
        msg.content = pack(msg.content, memo)
    ids = with_retries(lambda: list(grid.push_messages(messages)), "push")
    pushed_at = time.time()
    sent = {mid: msg for mid, msg in zip(ids, messages, strict=True) if mid}
    routes = {mid: msg.metadata.dst_node_id for mid, msg in sent.items()}
    arrived_at: dict[int, float] = {}
    unsent = [msg.metadata.dst_node_id for mid, msg in zip(ids, messages, strict=True) if not mid]
    pending = set(routes)
    replies: list[Message] = []
    stale: list[Message] = []
    incomplete: dict[int, str] = {}
    deadline = None if not timeout else start + timeout
    backoff = Backoff("pull")
    idle = poll or IdleBackoff()
    puller = reply_puller(grid, stall_timeout)

    def failed(upload: FailedUpload) -> None:
        if upload.reply_to not in pending:
            return
        pending.discard(upload.reply_to)
        node = routes[upload.reply_to]
        incomplete[node] = upload.reason
        log.warning("reply_upload_failed", node_id=node, reason=upload.reason)

    while pending and (deadline is None or time.monotonic() < deadline):
        try:
            pulled = puller.pull(list(pending))
            backoff.succeeded()
        except Exception as err:
            backoff.failed(err)
            continue
        for msg in pulled.replies:
            answered = msg.metadata.reply_to_message_id
            if answered not in pending:
                stale.append(msg)
                log.warning("stale_reply_dropped", reply_to=answered,
                            src_node_id=msg.metadata.src_node_id)
                continue
            pending.discard(answered)
            arrived_at[routes[answered]] = time.time()
            msg = _unpacked(msg, sent[answered])
            replies.append(msg)
            if on_reply is not None:
                on_reply(msg, routes[answered])
        for upload in pulled.failed:
            failed(upload)
        if pending and not pulled.replies:  # an upload's progress alone does not hurry the
            time.sleep(idle.next())  # polls: each is a write in the SuperLink's SQLite state
    for upload in puller.abandon(f"not complete when the exchange's deadline passed ({timeout} s "
                                 "after sending: round-timeout)"):
        failed(upload)
    return Exchange(
        replies=replies,
        missing=[routes[m] for m in pending] + unsent,
        routes=routes,
        seconds=time.monotonic() - start,
        stale=stale,
        incomplete=incomplete,
        sent_at=sent_at,
        pushed_at=pushed_at,
        arrived_at=arrived_at,
    )
