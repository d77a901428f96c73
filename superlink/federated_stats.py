"""Stage 0 of a run: learn what data the sites hold, without seeing any of it.

Every connected site answers a ``query.stats`` message with its feature description and the
sufficient statistics (count, sum, sum of squares, min, max) of its numeric features over its
training episodes. From these the SuperLink checks that the sites agree on one policy's
inputs and outputs, and merges exact global normalization statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from common import features as feat
from common.logs import get_logger
from common.norm_stats import Moments, from_record, global_stats, merge_all
from common.protocol import MOMENTS, SITE, STATS_QUERY, SiteInfo
from common.settings import RunConfig
from superlink.exchange import exchange
from superlink.polling import IdleBackoff

log = get_logger("zk0.superlink")


class FederationSetupError(RuntimeError):
    """The sites cannot form a federation as configured (too few, or incompatible data)."""


@dataclass(frozen=True)
class FederationData:
    sites: dict[int, SiteInfo]  # node id -> what the site told us
    features: dict[str, Any]  # the features every site's dataset offers
    moments: dict[str, Moments]
    stats: dict[str, dict[str, Any]]  # global normalization stats (LeRobot's format)
    failures: dict[int, str]  # node id -> why its stats query failed


def agree_features(sites: dict[int, SiteInfo]) -> dict[str, Any]:
    """The federation's features: the first site's, after every other site is checked against it."""
    first = next(iter(sites.values()))
    for info in sites.values():
        feat.compare_specs(info.site_name, info.features, first.features)
    names = [s.site_name for s in sites.values()]
    if len(set(names)) != len(names):
        raise FederationSetupError(f"two SuperNodes use the same site-name: {sorted(names)}")
    return first.features


def collect(grid: Grid, run: RunConfig) -> FederationData:
    """Query every connected site (waiting for ``min-sites``) and merge their statistics."""
    _, node_ids = sample_nodes(grid, run.min_sites, run.min_sites)
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type=STATS_QUERY) for node in node_ids
    ]
    result = exchange(grid, messages, run.round_timeout or None, poll=IdleBackoff.of(run))
    sites: dict[int, SiteInfo] = {}
    parts: list[dict[str, Moments]] = []
    failures: dict[int, str] = {node: "no reply before round-timeout" for node in result.missing}
    for msg in result.replies:
        node = result.routes.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
        if msg.has_error():
            failures[node] = msg.error.reason or f"error code {msg.error.code}"
            log.error("site_refused", node_id=node, reason=failures[node])
            continue
        info = SiteInfo.from_record(msg.content.config_records[SITE])
        sites[node] = info
        parts.append(from_record(msg.content.array_records[MOMENTS]))
        log.info("site_joined", site=info.site_name, node_id=node,
                 train_frames=info.train_frames, eval_episodes=info.eval_episodes,
                 device=info.device)
    if len(sites) < run.min_sites:
        detail = "; ".join(f"node {n}: {r}" for n, r in failures.items()) or "none answered"
        raise FederationSetupError(
            f"{len(sites)} site(s) answered the stats query, min-sites is {run.min_sites}: "
            f"{detail}"
        )
    features = agree_features(sites)
    moments = merge_all(parts)
    return FederationData(
        sites=sites,
        features=features,
        moments=moments,
        stats=global_stats(moments, feat.camera_keys(features)),
        failures=failures,
    )
