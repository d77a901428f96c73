"""The ServerApp's exchange loop survives transient SuperLink errors and reports silent sites."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from harness.inprocess_grid import InProcessGrid, server_context
from superlink import exchange as ex


def echo_app(msg: Message, context) -> Message:
    site = context.node_config["site-name"]
    return Message(RecordDict({"site": ConfigRecord({"site-name": site})}), reply_to=msg)


class FlakyGrid(InProcessGrid):
    """Pulls fail ``fail`` times first, as the SuperLink's 'database is locked' 500s do."""

    def __init__(self, *args, fail: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail = fail

    def pull_messages(self, message_ids):
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("HTTP 500: (sqlite3.OperationalError) database is locked")
        return super().pull_messages(message_ids)


def _messages(grid):
    return [Message(RecordDict(), dst_node_id=n, message_type="query.stats")
            for n in grid.get_node_ids()]


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(ex, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(ex, "BACKOFF_CAP", 0.05)
    server_context({}, run_id=7)  # Flower needs a task identity to create messages


def test_transient_pull_errors_are_retried():
    nodes = [{"site-name": f"s{i}"} for i in range(3)]
    grid = FlakyGrid(echo_app, nodes, {}, fail=3)
    seen = []
    result = ex.exchange(grid, _messages(grid), timeout=30,
                         on_reply=lambda m, node: seen.append(node))
    assert len(result.replies) == 3 and result.missing == []
    assert sorted(seen) == sorted(grid.get_node_ids())


def test_persistent_pull_errors_give_up():
    grid = FlakyGrid(echo_app, [{"site-name": "s0"}], {}, fail=ex.MAX_POLL_FAILURES + 1)
    with pytest.raises(RuntimeError, match="database is locked"):
        ex.exchange(grid, _messages(grid), timeout=None)


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
