"""Which sites take part in a round: seeded, so the same run config picks the same sites.

Flower's strategies sample with the process-global ``random`` over node ids in whatever order
the SuperLink lists them, and node ids are random 64-bit numbers assigned at registration: the
same run on another cluster would pick other sites. zk0 samples among the sites that joined
at stage 0, ordered by site name, with a generator seeded by (run seed, round).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping

from flwr.serverapp import Grid

from common.logs import get_logger
from superlink.exchange import with_retries

log = get_logger("zk0.superlink")

WAIT_POLL_SECONDS = 1.0
WAIT_LOG_SECONDS = 60.0  # while waiting, a "waiting_for_sites" line at most this often


def connected_sites(grid: Grid, sites: Mapping[int, str] | None = None) -> list[int]:
    """Node ids the SuperLink lists as connected: of the federation's ``sites`` (by site name),
    or every connected node (by id) when ``sites`` is None (stage 0, before anyone joined)."""
    online = set(with_retries(lambda: list(grid.get_node_ids()), "list_nodes"))
    if sites is None:
        return sorted(online)
    return sorted((n for n in sites if n in online), key=lambda n: sites[n])


def wait_for_sites(
    grid: Grid, sites: Mapping[int, str] | None, needed: int, timeout: float | None
) -> list[int]:
    """:func:`connected_sites` once ``needed`` of them are connected, or whatever is connected
    when ``timeout`` seconds (None or 0: no limit) have passed; the caller decides if it is
    enough."""
    deadline = None if not timeout else time.monotonic() + timeout
    logged, last = -1.0, -1
    while len(nodes := connected_sites(grid, sites)) < needed:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            log.warning("sites_missing", connected=len(nodes), needed=needed, waited=timeout)
            return nodes
        if len(nodes) != last or now - logged >= WAIT_LOG_SECONDS:
            log.info("waiting_for_sites", connected=len(nodes), needed=needed,
                     timeout=timeout or None)
            logged, last = now, len(nodes)
        time.sleep(WAIT_POLL_SECONDS)
    return nodes


def sample_sites(
    nodes: list[int], sites: Mapping[int, str], fraction: float, seed: int, server_round: int
) -> list[int]:
    """``max(1, int(fraction * len(nodes)))`` of ``nodes`` (connected, ordered by site name),
    drawn with a generator seeded by (run seed, round); none of none."""
    if not nodes:
        return []
    size = max(1, int(fraction * len(nodes)))
    if size >= len(nodes):
        return nodes
    rng = random.Random(seed * 1_000_003 + server_round)
    return sorted(rng.sample(nodes, size), key=lambda n: sites[n])


class SampledNodes:
    """What Flower's ``configure_train``/``configure_evaluate`` need from a grid (its node ids),
    limited to the sites zk0 selected, so Flower's own message building addresses exactly them.
    """

    def __init__(self, node_ids: Iterable[int]) -> None:
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)
