"""Stage 0 of a run: learn what data the sites hold, without seeing any of it.

Every connected site answers a ``query.stats`` message with its feature description and the
sufficient statistics (count, sum, sum of squares, min, max) of its numeric features over its
training episodes. From these the SuperLink checks that the sites agree on one policy's
inputs and outputs, and merges exact global normalization statistics.

Stage 0 never waits forever: it waits at most ``join-timeout`` for ``min-sites`` sites to be
connected, then asks every connected site. One odd site does not stop the others: the
federation's features are those of the largest group of sites that agree (feature names,
dtypes, shapes, joint names in order, cameras; ties go to the group with the alphabetically
first site name, so the choice never depends on who answered first), or, for a resumed run,
the features the run started with. A site that differs is left out, with its reason in
``run.json`` and the log, and is sent an ``EXCLUDED_NOTICE`` so its own operator's log says
what to fix. Only if fewer than ``min-sites`` sites remain does the run end.

The query is signed by the coordinator and every reply must be signed by the node's registered
key under its registered name (:mod:`superlink.authenticity`); a site whose reply fails that is
left out of the run with the reason, and the frame counts of the accepted replies bound the
sites' aggregation weights from then on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import Message, RecordDict

from common import features as feat
from common.logs import get_logger
from common.norm_stats import Moments, from_record, global_stats, merge_all
from common.protocol import (
    EXCLUDED_NOTICE,
    MOMENTS,
    NOTICE,
    SITE,
    STATS_QUERY,
    ExclusionNotice,
    SiteInfo,
)
from common.settings import RunConfig
from superlink.exchange import exchange
from superlink.polling import IdleBackoff
from superlink.strategy.node_selection import wait_for_sites
from superlink.strategy.replies import ReplyRejected

if TYPE_CHECKING:
    from superlink.authenticity import FederationGuard

log = get_logger("zk0.superlink")

NOTICE_TIMEOUT = 60.0  # seconds to wait for an excluded site to acknowledge its notice


class FederationSetupError(RuntimeError):
    """The sites cannot form a federation as configured (too few, or incompatible data)."""


@dataclass(frozen=True)
class FederationData:
    sites: dict[int, SiteInfo]  # node id -> what the site told us (agreeing sites only)
    features: dict[str, Any]  # the features every site's dataset offers
    moments: dict[str, Moments]
    stats: dict[str, dict[str, Any]]  # global normalization stats (LeRobot's format)
    failures: dict[int, str]  # node id -> why its stats query failed
    excluded: dict[str, str] = field(default_factory=dict)  # site name -> why it was left out


def agree_features(
    sites: Mapping[int, SiteInfo], federation: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[int, str]]:
    """The federation's features and the sites that differ from them (node id -> reason).

    ``federation`` given (a resumed run): every site is checked against it. Otherwise the
    largest group of agreeing sites sets them (ties: the group holding the alphabetically
    first site name), taken from that group's alphabetically first site.
    """
    names = [s.site_name for s in sites.values()]
    if len(set(names)) != len(names):
        raise FederationSetupError(f"two SuperNodes use the same site-name: {sorted(names)}")
    if federation is None:
        groups: dict[str, list[SiteInfo]] = defaultdict(list)
        for info in sites.values():
            groups[feat.signature(info.features)].append(info)
        largest = min(groups.values(),
                      key=lambda g: (-len(g), min(s.site_name for s in g)))
        federation = min(largest, key=lambda s: s.site_name).features
    excluded: dict[int, str] = {}
    for node, info in sites.items():
        try:
            feat.compare_specs(info.site_name, info.features, federation)
        except feat.FeatureMismatchError as err:
            excluded[node] = str(err)
    return dict(federation), excluded


def collect(
    grid, run: RunConfig, guard: FederationGuard, federation: Mapping[str, Any] | None = None
) -> FederationData:
    """Query every connected site (after waiting for ``min-sites``, at most ``join-timeout``)
    and merge the statistics of those whose features agree (with ``federation`` if given)."""
    node_ids = wait_for_sites(grid, None, run.min_sites, run.join_timeout or None)
    if len(node_ids) < run.min_sites:
        raise FederationSetupError(
            f"{len(node_ids)} site(s) connected after join-timeout={run.join_timeout}s, "
            f"min-sites is {run.min_sites}: start the missing sites' SuperNodes (and check "
            "their log for refusals), or lower min-sites"
        )
    guard.refresh(grid)
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type=STATS_QUERY) for node in node_ids
    ]
    guard.sign_instructions(messages)
    result = exchange(grid, messages, run.round_timeout or None, poll=IdleBackoff.of(run),
                      stall_timeout=run.upload_stall_timeout)
    sites: dict[int, SiteInfo] = {}
    parts: dict[int, dict[str, Moments]] = {}
    failures: dict[int, str] = {node: "no reply before round-timeout" for node in result.missing}
    failures |= result.incomplete
    for msg in result.replies:
        node = result.routes[msg.metadata.reply_to_message_id]
        if msg.has_error():
            failures[node] = msg.error.reason or f"error code {msg.error.code}"
            log.error("site_refused", node_id=node, reason=failures[node])
            continue
        try:
            guard.check_signed(msg, node, STATS_QUERY, 0)
        except ReplyRejected as err:
            failures[node] = f"{guard.name_of(node)}: refused ({err.kind}): {err}"
            log.error("site_refused", node_id=node, site=guard.name_of(node), kind=err.kind,
                      reason=str(err))
            continue
        try:
            info = SiteInfo.from_record(msg.content.config_records[SITE])
            parts[node] = from_record(msg.content.array_records[MOMENTS])
        except (KeyError, TypeError, ValueError) as err:
            failures[node] = f"unusable stats reply: {type(err).__name__}: {err}"
            log.error("site_refused", node_id=node, reason=failures[node])
            continue
        guard.declare(node, info)
        sites[node] = info
        log.info("site_joined", site=info.site_name, node_id=node,
                 train_frames=info.train_frames, eval_episodes=info.eval_episodes,
                 device=info.device)
    features, odd = agree_features(sites, federation) if sites else ({}, {})
    excluded = {sites[node].site_name: reason for node, reason in odd.items()}
    for node, reason in odd.items():
        log.error("site_excluded", site=sites[node].site_name, node_id=node, reason=reason)
    notify_excluded(grid, {node: sites.pop(node) for node in odd}, odd, guard)
    for node in odd:
        parts.pop(node)
    if len(sites) < run.min_sites:
        detail = "; ".join(
            [f"node {n}: {r}" for n, r in failures.items()]
            + [f"{s}: {r}" for s, r in excluded.items()]
        ) or "none answered"
        raise FederationSetupError(
            f"{len(sites)} site(s) answered the stats query with the federation's features, "
            f"min-sites is {run.min_sites}: {detail}"
        )
    moments = merge_all(parts.values())
    return FederationData(
        sites=sites,
        features=features,
        moments=moments,
        stats=global_stats(moments, feat.camera_keys(features)),
        failures=failures,
        excluded=excluded,
    )


def notify_excluded(
    grid, sites: Mapping[int, SiteInfo], reasons: Mapping[int, str], guard: FederationGuard
) -> None:
    """Tell each excluded site why (its ClientApp logs it), waiting briefly for the answer."""
    if not sites:
        return
    messages = [
        Message(
            RecordDict({NOTICE: ExclusionNotice(info.site_name, reasons[node]).to_record()}),
            dst_node_id=node,
            message_type=EXCLUDED_NOTICE,
        )
        for node, info in sites.items()
    ]
    guard.sign_instructions(messages)  # sites act only on the coordinator's signed word
    result = exchange(grid, messages, NOTICE_TIMEOUT)
    for msg in result.replies:
        node = result.routes[msg.metadata.reply_to_message_id]
        log.info("site_notified", site=sites[node].site_name, node_id=node,
                 acknowledged=not msg.has_error())
    for node in result.missing:
        log.warning("site_not_notified", site=sites[node].site_name, node_id=node)
