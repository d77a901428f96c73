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

log = get_logger("zk0.superlink")

WAIT_POLL_SECONDS = 1.0


def connected_sites(grid: Grid, sites: Mapping[int, str]) -> list[int]:
    """Node ids of the federation's sites that the SuperLink lists as connected, by site name."""
    online = set(grid.get_node_ids())
    return sorted((n for n in sites if n in online), key=lambda n: sites[n])


def select_nodes(
    grid: Grid,
    sites: Mapping[int, str],
    fraction: float,
    seed: int,
    server_round: int,
    wait_for: int = 1,
) -> list[int]:
    """``max(1, int(fraction * connected))`` of the connected sites, the same ones for the
    same inputs, once at least ``wait_for`` of the federation's sites are connected."""
    while len(nodes := connected_sites(grid, sites)) < wait_for:
        log.info("waiting_for_sites", connected=len(nodes), needed=wait_for)
        time.sleep(WAIT_POLL_SECONDS)
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
