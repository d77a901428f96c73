"""The ServerApp's exchange loop: transient SuperLink errors are retried on pushes and pulls
alike, programming errors are not; messages expire with the exchange; silent sites are
reported; a reply to another exchange's message is never counted as this one's."""

from __future__ import annotations

import time

import httpx
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from harness.inprocess_grid import MESSAGE_UNAVAILABLE, InProcessGrid, server_context
from superlink import exchange as ex


def echo_app(msg: Message, context) -> Message:
    site = context.node_config["site-name"]
    return Message(RecordDict({"site": ConfigRecord({"site-name": site})}), reply_to=msg)


def http_error(status: int, text: str = "") -> httpx.HTTPStatusError:
    """What Flower's HTTP grid raises for an error status (httpx's own exception)."""
    request = httpx.Request("POST", "https://127.0.0.1:8000/v1/runtime/pull-messages")
    response = httpx.Response(status, text=text, request=request)
    return httpx.HTTPStatusError(f"{status} from the SuperLink", request=request,
                                 response=response)


class FlakyGrid(InProcessGrid):
    """Pushes and pulls raise the given errors first, then work."""

    def __init__(self, *args, pull_errors=(), push_errors=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.pull_errors = list(pull_errors)
        self.push_errors = list(push_errors)
        self.calls = {"push": 0, "pull": 0}

    def push_messages(self, messages):
        self.calls["push"] += 1
        if self.push_errors:
            raise self.push_errors.pop(0)
        return super().push_messages(messages)

    def pull_messages(self, message_ids):
        self.calls["pull"] += 1
        if self.pull_errors:
            raise self.pull_errors.pop(0)
        return super().pull_messages(message_ids)


def _messages(grid):
    return [Message(RecordDict(), dst_node_id=n, message_type="query.stats")
            for n in grid.get_node_ids()]


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(ex, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(ex, "BACKOFF_CAP", 0.05)
    server_context({}, run_id=7)  # Flower needs a task identity to create messages


def test_transient_push_and_pull_errors_are_retried():
    locked = http_error(500, "(sqlite3.OperationalError) database is locked")
    nodes = [{"site-name": f"s{i}"} for i in range(3)]
    grid = FlakyGrid(
        echo_app, nodes, {},
        push_errors=[locked, httpx.ConnectError("connection refused"), http_error(503)],
        pull_errors=[locked, httpx.ReadTimeout("timed out"), ConnectionResetError()],
    )
    seen = []
    result = ex.exchange(grid, _messages(grid), timeout=30,
                         on_reply=lambda m, node: seen.append(node))
    assert len(result.replies) == 3 and result.missing == [] and result.stale == []
    assert sorted(seen) == sorted(grid.get_node_ids())
    assert grid.calls["push"] == 4 and grid.calls["pull"] >= 4


@pytest.mark.parametrize("where", ["push", "pull"])
@pytest.mark.parametrize("error", [
    TypeError("pull_messages() got an unexpected keyword argument"),
    ValueError("Invalid message"),
    AttributeError("'NoneType' object has no attribute 'run_id'"),
    http_error(400, "bad request"),
    http_error(403, "forbidden"),
    http_error(413, "payload too large"),
], ids=lambda e: type(e).__name__ + (f"-{e.response.status_code}"
                                      if isinstance(e, httpx.HTTPStatusError) else ""))
def test_programming_and_request_errors_are_not_retried(where, error):
    grid = FlakyGrid(echo_app, [{"site-name": "s0"}], {}, **{f"{where}_errors": [error]})
    with pytest.raises(type(error)):
        ex.exchange(grid, _messages(grid), timeout=30)
    assert grid.calls[where] == 1


def test_is_transient_decides_by_type_and_status():
    assert all(ex.is_transient(e) for e in (
        http_error(500), http_error(502), http_error(503), http_error(504), http_error(429),
        httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("x"),
        ConnectionRefusedError(), TimeoutError()))
    assert not any(ex.is_transient(e) for e in (
        http_error(400), http_error(401), http_error(404), TypeError(), ValueError(),
        KeyError("x"), RuntimeError("HTTP 500"), OSError("disk")))


def test_persistent_transient_errors_give_up():
    errors = [http_error(500, "database is locked")] * (ex.MAX_POLL_FAILURES + 1)
    grid = FlakyGrid(echo_app, [{"site-name": "s0"}], {}, pull_errors=errors)
    with pytest.raises(httpx.HTTPStatusError, match="500"):
        ex.exchange(grid, _messages(grid), timeout=None)
    assert grid.calls["pull"] == ex.MAX_POLL_FAILURES + 1


def test_silent_site_is_reported_missing_after_the_timeout():
    class SilentGrid(InProcessGrid):
        def pull_messages(self, message_ids):
            return [m for m in super().pull_messages(message_ids)
                    if self.contexts[m.metadata.src_node_id].node_config["site-name"] != "s1"]

    grid = SilentGrid(echo_app, [{"site-name": "s0"}, {"site-name": "s1"}], {})
    result = ex.exchange(grid, _messages(grid), timeout=0.3)
    assert len(result.replies) == 1
    silent = [n for n, c in grid.contexts.items() if c.node_config["site-name"] == "s1"]
    assert result.missing == silent


def test_messages_expire_when_the_exchange_stops_waiting():
    """The TTL Flower would give (12 h) is replaced by the exchange's own deadline, so a late
    site's work ends with the round: the SuperLink (here the grid, acting as it does) answers
    'message unavailable' once it passes and never delivers the late reply."""
    grid = InProcessGrid(echo_app, [{"site-name": "s0"}, {"site-name": "slow"}], {},
                         late={("slow", "query.stats"): 5.0})
    messages = _messages(grid)
    before = time.time()
    result = ex.exchange(grid, messages, timeout=0.5)
    for msg in messages:
        assert before + 0.5 - 0.05 <= msg.metadata.created_at + msg.metadata.ttl
        assert msg.metadata.created_at + msg.metadata.ttl <= time.time() + 0.05
    slow = [n for n in grid.get_node_ids() if grid.site_name(n) == "slow"]
    assert result.missing == slow and len(result.replies) == 1
    [late] = [mid for mid, node in result.routes.items() if node in slow]
    [answer] = grid.pull_messages([late])  # asked again after the round: it has expired
    assert answer.has_error() and answer.error.code == MESSAGE_UNAVAILABLE
    assert grid.pull_messages([late]) == []  # and its reply is never delivered


def test_reply_to_an_earlier_exchange_is_kept_apart():
    """A transport that hands back replies nobody asked for (at-least-once delivery, or a bug)
    cannot slip an earlier round's reply into this one."""
    grid = InProcessGrid(echo_app, [{"site-name": "s0"}, {"site-name": "slow"}], {},
                         deliver_unasked=True,
                         delay=lambda site, msg: 0.6 if site == "slow" and first[0] else 0.0)
    first = [True]
    round1 = ex.exchange(grid, _messages(grid), timeout=0.3)
    slow = [n for n in grid.get_node_ids() if grid.site_name(n) == "slow"]
    assert round1.missing == slow
    first[0] = False
    time.sleep(0.4)  # the slow site's round-1 reply is now due
    round2 = ex.exchange(grid, _messages(grid), timeout=5)
    assert [m.metadata.reply_to_message_id for m in round2.stale] == list(
        set(round1.routes) - {m.metadata.reply_to_message_id for m in round1.replies})
    assert {m.metadata.reply_to_message_id for m in round2.replies} == set(round2.routes)
    assert len(round2.replies) == 2 and round2.missing == []
