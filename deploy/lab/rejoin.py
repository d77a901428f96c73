"""A restarted site rejoins: it waits out its old node's heartbeat window instead of failing.

Flower 1.42's SuperLink activates a SuperNode's node only while that node is registered or
offline (``LinkState.activate_node``: status in REGISTERED, OFFLINE). A SuperNode that stops
cleanly deactivates its node on the way out; one that is killed (a crash, a reboot, SIGKILL,
the OOM killer) leaves it online until ``online_until`` = its last heartbeat +
``HEARTBEAT_PATIENCE`` (2) x ``HEARTBEAT_DEFAULT_INTERVAL`` (30 s), i.e. 60 s (heartbeats go
out every ~24 s). A restart inside that window is refused with "[code: 2004] Failed to
activate SuperNode." and Flower exit code 305, word for word what an unregistered key gets:
only the SuperLink's own log tells the two apart ("could not be activated" vs "No SuperNode
found with the given public key"), and a lab cannot read it.

So the launcher keeps a record in its work dir (``node.json``: node id, SuperLink address, the
last time its SuperNode was seen running, refreshed every few seconds). A 2004 refusal within
:data:`NODE_EXPIRY_S` + :data:`MARGIN_S` of that time is the old node still counting as online:
the launcher retries with backoff until the window has passed, and says so. Without a recent
record (a first start, or a site that was down for long) a 2004 refusal is an unregistered
key, and the launcher stops at once with that hint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

from common import atomic

#: How long the SuperLink keeps a silent node online after its last heartbeat (flwr 1.42).
NODE_EXPIRY_S = HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL
#: Slack for the record's refresh period and clock steps.
MARGIN_S = 30.0
#: How often a running launcher refreshes its record.
REFRESH_S = 5.0
#: The SuperLink refused to activate the node (unregistered key, or node still online).
ACTIVATION_REFUSED = "[code: 2004]"
RECORD_FILE = "node.json"


@dataclass(frozen=True)
class NodeRecord:
    """The node this site's SuperNode last ran as, and when it was last seen running."""

    node_id: int
    superlink: str
    last_seen: float  # time.time()

    @classmethod
    def load(cls, work_dir: Path) -> NodeRecord | None:
        """The record in ``work_dir``, or None (missing or unreadable: as if never run)."""
        try:
            data = json.loads((work_dir / RECORD_FILE).read_text())
            return cls(int(data["node_id"]), str(data["superlink"]), float(data["last_seen"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, work_dir: Path) -> None:
        atomic.write_json(work_dir / RECORD_FILE, asdict(self))


def rejoin_deadline(record: NodeRecord | None, superlink: str, now: float) -> float | None:
    """Until when a 2004 refusal means "old node still online" (None: it does not)."""
    if record is None or record.superlink != superlink:
        return None
    deadline = record.last_seen + NODE_EXPIRY_S + MARGIN_S
    return deadline if deadline > now else None


def backoff(first: float = 2.0, factor: float = 2.0, cap: float = 10.0) -> Iterator[float]:
    """2, 4, 8, 10, 10, ... seconds."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)


def refused_activation(log_text: str) -> bool:
    return ACTIVATION_REFUSED in log_text


def retry_message(site: str, record: NodeRecord, deadline: float, delay: float) -> str:
    now = time.time()
    ago = now - record.last_seen
    why = (
        f"was seen running {ago:.0f} s ago (another launcher on this work dir, or one that "
        "died just now without deactivating its node)"
        if ago <= 2 * REFRESH_S
        else f"last seen running {ago:.0f} s ago, did not stop cleanly"
    )
    return (
        f"site {site!r}: the SuperLink refused to activate this SuperNode (Flower code 2004). "
        f"This site's previous SuperNode (node {record.node_id}) {why} and still counts as "
        f"online until {NODE_EXPIRY_S} s after its last heartbeat; retrying in {delay:.0f} s "
        f"(for up to {max(deadline - now, 0):.0f} s more)."
    )
