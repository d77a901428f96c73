"""Stage 0 of a run: learn what data the sites hold, without seeing any of it.

Every connected site answers a ``query.stats`` message with its feature description, its fps
and the sufficient statistics (count, sum, sum of squares, min, max) of its numeric features
over its training episodes. From these the SuperLink checks that the sites agree on one
policy's inputs and outputs, and merges exact global normalization statistics.

Stage 0 never waits forever: it waits at most ``join-timeout`` for ``min-sites`` sites to be
connected, then asks every connected site. One odd site does not stop the others:

- every reply is parsed through the reply model (:mod:`superlink.reply_model`) before
  anything uses it, and its statistics are checked before they are merged: one entry per
  numeric feature with the feature's size, a count equal to the training frames the site
  declared, finite values, ``min <= mean <= max``, a variance between 0 and what the range
  allows (:func:`common.norm_stats.check`);
- the federation's features are those of the largest group of sites that agree (feature names,
  dtypes, shapes, joint names in order, cameras, fps; ties go to the group with the
  alphabetically first site name, so the choice never depends on who answered first), or, for
  a resumed run, the features (and fps) the run started with.

A site whose reply or statistics fail, or whose features differ, is left out, with its reason
in ``run.json`` and the log, and is sent an ``EXCLUDED_NOTICE`` so its own operator's log says
what to fix. Only if fewer than ``min-sites`` sites remain does the run end.

The query is signed by the coordinator and every reply must be signed by the node's registered
key under its registered name (:mod:`superlink.authenticity`); a site whose reply fails that is
left out of the run with the reason, and the frame counts of the accepted replies (which their
statistics must count exactly) bound the sites' aggregation weights from then on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import Message, RecordDict

from common import features as feat
from common.logs import get_logger
from common.norm_stats import Moments, global_stats, merge_all
from common.protocol import EXCLUDED_NOTICE, NOTICE, STATS_QUERY, ExclusionNotice, SiteInfo
from common.settings import RunConfig
from superlink.exchange import exchange
from superlink.polling import IdleBackoff
from superlink.reply_model import ReplyRejected, parse_stats
from superlink.strategy.node_selection import wait_for_sites

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
    fps: float | None  # their frame rate (None: no site joined)
    moments: dict[str, Moments]
    stats: dict[str, dict[str, Any]]  # global normalization stats (LeRobot's format)
    failures: dict[int, str]  # node id -> why its stats query failed
    excluded: dict[str, str] = field(default_factory=dict)  # site name -> why it was left out


def agree_features(
    sites: Mapping[int, SiteInfo], federation: Mapping[str, Any] | None = None,
    fps: float | None = None,
) -> tuple[dict[str, Any], float | None, dict[int, str]]:
    """The federation's features and fps, and the sites that differ (node id -> reason).

    ``federation`` given (a resumed run): every site is checked against it (and ``fps``, if
    the run recorded one). Otherwise the largest group of agreeing sites sets them (ties: the
    group holding the alphabetically first site name), taken from that group's
    alphabetically first site.
    """
    names = [s.site_name for s in sites.values()]
    if len(set(names)) != len(names):
        raise FederationSetupError(f"two SuperNodes use the same site-name: {sorted(names)}")
    if federation is None:
        groups: dict[tuple[str, float], list[SiteInfo]] = defaultdict(list)
        for info in sites.values():
            groups[(feat.signature(info.features), info.fps)].append(info)
        largest = min(groups.values(),
                      key=lambda g: (-len(g), min(s.site_name for s in g)))
        first = min(largest, key=lambda s: s.site_name)
        federation, fps = first.features, first.fps
    excluded: dict[int, str] = {}
    for node, info in sites.items():
        try:
            feat.compare_specs(info.site_name, info.features, federation)
            if fps is not None and info.fps != fps:
                raise feat.FeatureMismatchError(
                    f"site {info.site_name!r}: dataset recorded at {info.fps:g} fps, the "
                    f"federation's at {fps:g} fps (action chunks would be mistimed)")
        except feat.FeatureMismatchError as err:
            excluded[node] = str(err)
    return dict(federation), fps, excluded


def collect(
    grid, run: RunConfig, guard: FederationGuard, federation: Mapping[str, Any] | None = None,
    fps: float | None = None,
) -> FederationData:
    """Query every connected site (after waiting for ``min-sites``, at most ``join-timeout``)
    and merge the statistics of those whose reply checks out and whose features agree (with
    ``federation`` and ``fps`` if given)."""
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
    odd: dict[int, str] = {}  # node -> why its reply or its statistics were refused
    failures |= result.incomplete
    for msg in result.replies:
        node = result.routes[msg.metadata.reply_to_message_id]
        if msg.has_error():
            failures[node] = msg.error.reason or f"error code {msg.error.code}"
            log.error("site_refused", node_id=node, reason=failures[node][:300])
            continue
        try:
            guard.check_signed(msg, node, STATS_QUERY, 0)
        except ReplyRejected as err:
            failures[node] = f"{guard.name_of(node)}: refused ({err.kind}): {err}"
            log.error("site_refused", node_id=node, site=guard.name_of(node), kind=err.kind,
                      reason=str(err)[:300])
            continue
        try:
            reply = parse_stats(msg)
        except ReplyRejected as err:
            odd[node] = f"site {guard.name_of(node)!r}: stage-0 reply refused: {err}"
            continue
        sites[node], parts[node] = reply.site, reply.moments
        log.info("site_joined", site=reply.site.site_name, node_id=node,
                 train_frames=reply.site.train_frames, eval_episodes=reply.site.eval_episodes,
                 fps=reply.site.fps, device=reply.site.device)
    features, fps, differ = agree_features(sites, federation, fps) if sites else ({}, fps, {})
    odd |= differ
    excluded = {guard.name_of(node): reason for node, reason in odd.items()}
    for node, reason in odd.items():
        log.error("site_excluded", site=guard.name_of(node), node_id=node, reason=reason[:300])
    notify_excluded(grid, {node: guard.name_of(node) for node in odd}, odd, guard)
    for node in differ:
        sites.pop(node)
        parts.pop(node)
    for node, info in sites.items():  # signed: the bound of its aggregation weights
        guard.declare(node, info)
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
        fps=fps,
        moments=moments,
        stats=global_stats(moments, feat.camera_keys(features)),
        failures=failures,
        excluded=excluded,
    )


def notify_excluded(
    grid, sites: Mapping[int, str], reasons: Mapping[int, str], guard: FederationGuard
) -> None:
    """Tell each excluded site (node id -> registered name) why (its ClientApp logs it),
    waiting briefly for the answer."""
    if not sites:
        return
    messages = [
        Message(
            RecordDict({NOTICE: ExclusionNotice(name, reasons[node]).to_record()}),
            dst_node_id=node,
            message_type=EXCLUDED_NOTICE,
        )
        for node, name in sites.items()
    ]
    guard.sign_instructions(messages)  # sites act only on the coordinator's signed word
    result = exchange(grid, messages, NOTICE_TIMEOUT)
    for msg in result.replies:
        node = result.routes[msg.metadata.reply_to_message_id]
        log.info("site_notified", site=sites[node], node_id=node,
                 acknowledged=not msg.has_error())
    for node in result.missing:
        log.warning("site_not_notified", site=sites[node], node_id=node)
