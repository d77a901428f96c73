"""Send messages to sites and collect replies, logging each site's reply as it arrives.

Flower's ``Grid.send_and_receive`` blocks silently until every reply is in or the timeout
passes. A lab coordinator watching a round that takes an hour wants to see which sites have
answered; this loop uses the same ``push_messages``/``pull_messages`` primitives and reports
every reply and every site that never answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid

POLL_SECONDS = 1.0


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
) -> Exchange:
    start = time.monotonic()
    ids = list(grid.push_messages(messages))
    routes = {mid: msg.metadata.dst_node_id for mid, msg in zip(ids, messages, strict=True) if mid}
    unsent = [msg.metadata.dst_node_id for mid, msg in zip(ids, messages, strict=True) if not mid]
    pending = set(routes)
    replies: list[Message] = []
    deadline = None if not timeout else start + timeout
    while pending and (deadline is None or time.monotonic() < deadline):
        got = list(grid.pull_messages(list(pending)))
        for msg in got:
            pending.discard(msg.metadata.reply_to_message_id)
            replies.append(msg)
            if on_reply is not None:
                on_reply(msg, routes.get(msg.metadata.reply_to_message_id, 0))
        if pending and not got:
            time.sleep(POLL_SECONDS)
    return Exchange(
        replies=replies,
        missing=[routes[m] for m in pending] + unsent,
        routes=routes,
        seconds=time.monotonic() - start,
    )
