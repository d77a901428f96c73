"""Send messages to sites and collect replies, logging each site's reply as it arrives.

Flower's ``Grid.send_and_receive`` blocks silently until every reply is in or the timeout
passes. A lab coordinator watching a round that takes an hour wants to see which sites have
answered; this loop uses the same ``push_messages``/``pull_messages`` primitives and reports
every reply and every site that never answered.

It also outlives the SuperLink's transient errors: with ``--database`` Flower 1.42 keeps
messages in SQLite with a 5 s lock timeout, and while sites upload hundreds of MB a poll can
fail with HTTP 500 "database is locked". Flower's own loop lets that kill the ServerApp (and
the run); here a failed poll is logged and retried with backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid

from common.logs import get_logger
from superlink.polling import IdleBackoff

POLL_SECONDS = 2.0  # base of the retry backoff after a failed poll
MAX_POLL_FAILURES = 20  # consecutive failed polls before the ServerApp gives up
BACKOFF_CAP = 30.0  # seconds between retries, at most

log = get_logger("zk0.superlink")


@dataclass
class Exchange:
    replies: list[Message]
    missing: list[int]  # node ids that never replied before the timeout (or were never sent to)
    routes: dict[str, int]  # message id -> destination node id
    seconds: float


def exchange(
    grid: Grid,
    messages: list[Message],
    timeout: float | None,
    on_reply: Callable[[Message, int], None] | None = None,
    poll: IdleBackoff | None = None,
) -> Exchange:
    start = time.monotonic()
    ids = list(grid.push_messages(messages))
    routes = {mid: msg.metadata.dst_node_id for mid, msg in zip(ids, messages, strict=True) if mid}
    unsent = [msg.metadata.dst_node_id for mid, msg in zip(ids, messages, strict=True) if not mid]
    pending = set(routes)
    replies: list[Message] = []
    deadline = None if not timeout else start + timeout
    failures = 0
    idle = poll or IdleBackoff()
    while pending and (deadline is None or time.monotonic() < deadline):
        try:
            got = list(grid.pull_messages(list(pending)))
            failures = 0
        except Exception as err:  # the grid raises what its HTTP client raised
            failures += 1
            if failures > MAX_POLL_FAILURES:
                raise
            wait = min(POLL_SECONDS * 2**failures, BACKOFF_CAP)
            log.warning("poll_failed", attempt=failures, retry_in=wait,
                        error=f"{type(err).__name__}: {str(err)[:200]}")
            time.sleep(wait)
            continue
        for msg in got:
            pending.discard(msg.metadata.reply_to_message_id)
            replies.append(msg)
            if on_reply is not None:
                on_reply(msg, routes.get(msg.metadata.reply_to_message_id, 0))
        if pending and not got:
            time.sleep(idle.next())
    return Exchange(
        replies=replies,
        missing=[routes[m] for m in pending] + unsent,
        routes=routes,
        seconds=time.monotonic() - start,
    )
