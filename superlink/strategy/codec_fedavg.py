"""FedAvg's steps over zk0's wire codec: the base every zk0 strategy derives from.

Flower's strategies (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad) exchange plain
float32 ArrayRecords and fail the whole run on one malformed reply. zk0's messages carry the
trainable parameters in ``wire-dtype`` with a digest per array, and sites send back updates
(local weights minus the global they received), not weights. :class:`CodecFedAvg` is a
``FedAvg`` whose small steps do that:

- ``configure_train``/``configure_evaluate``: zk0 picks the sites (seeded, see
  :mod:`superlink.strategy.node_selection`), Flower builds the messages, then the float32
  global weights are encoded once for the wire and the federation's normalization stats are
  attached;
- ``aggregate_train``: every reply goes through :meth:`CodecFedAvg.check_reply` (error,
  report, digest, encoding, names/shapes/dtypes against the global model, finite values) and
  the accepted updates through :meth:`CodecFedAvg.check_norms` (norm against the round's
  median, :mod:`superlink.strategy.update_checks`); what fails is recorded as a
  :class:`~superlink.strategy.replies.Failure` and left out. With fewer than ``min_replies``
  accepted updates the round does not move the model (``None``, so Flower's server step is
  skipped and its state left as it was); otherwise the weighted mean of the accepted updates
  is added to the float32 global straight from the wire bytes.

Flower's server optimizers derive from ``FedAvg`` and call ``super().aggregate_train`` for the
weighted mean, then take their own step. So a zk0 strategy is Flower's class with
``CodecFedAvg`` behind it (``class FedAvgM(flwr.FedAvgM, CodecFedAvg)``): Flower's FedAvgM,
FedAdam, ... steps run unchanged on a mean that every strategy computes the same checked way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

import superlink.strategy.state as state
import superlink.strategy.update_checks as update_checks
from common import codec
from common.logs import get_logger
from common.protocol import (
    ARRAYS,
    CODEC,
    METRICS,
    NORM_STATS,
    NOTES,
    TRAJECTORY,
    TRAJECTORY_INFO,
    SiteNotes,
    SiteReport,
)
from common.trajectory import Trajectory, TrajectoryError
from superlink.strategy.node_selection import SampledNodes, sample_sites, wait_for_sites
from superlink.strategy.replies import AcceptedReply, Failure, ReplyRejected, RoundReplies

if TYPE_CHECKING:
    from superlink.authenticity import FederationGuard

TRAIN, EVALUATE = "train", "evaluate"
KEPT_AT_SITE = "kept at the site (share-trajectories = false)"

log = get_logger("zk0.superlink")

#: zk0 selects the sites itself (:mod:`node_selection`); Flower then addresses all of them.
ADDRESS_EVERY_SELECTED_NODE: dict[str, Any] = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}


@dataclass(frozen=True)
class ExchangeSettings:
    """What a zk0 strategy needs beyond Flower's own parameters; fixed for the whole run."""

    wire_dtype: str
    norm_stats: ArrayRecord  # the federation's normalization stats, sent with every model
    sites: Mapping[int, str]  # node id -> site name, from stage 0
    fraction_train: float = 1.0
    min_sites: int = 1  # a round waits until this many of the sites are connected ...
    wait_timeout: float | None = None  # ... or this many seconds have passed (None: forever)
    seed: int = 0
    trajectory_frames: int = 0  # the most frames a site's trajectory may have
    action_dims: int = 0  # the federation's action feature size
    min_replies: int = 1  # accepted train updates a round needs to move the global model
    max_update_norm_ratio: float = 0.0  # see update_checks.norm_outliers; 0 = off
    round_timeout: float | None = None  # for the reason of an expired message
    # Signs instructions and checks identity/signature/weight of replies (a run always has one;
    # None only for tests and benchmarks of the aggregation itself).
    guard: FederationGuard | None = None


class CodecFedAvg(FedAvg):
    """FedAvg over zk0's codec and reply checks; see the module docstring.

    Concrete strategies get ``self.settings`` from ``WithExchangeSettings`` (see
    :mod:`superlink.strategy.flower_strategies`); this class only adds per-round state.
    """

    settings: ExchangeSettings
    #: Attributes carrying server state from round to round (saved with every checkpoint).
    state_attributes: tuple[str, ...] = state.FLOWER_STATE_ATTRIBUTES

    def __init__(self, **flower_params: Any) -> None:
        super().__init__(**flower_params)
        self.downlink_bytes = 0  # bytes of the model as encoded for the latest message
        self._global: dict[str, np.ndarray] = {}  # float32 weights the replies refer to
        self._sent: dict[tuple[str, int], list[Message]] = {}
        self._replies: dict[tuple[str, int], RoundReplies] = {}
        self.offline: list[int] = []  # the federation's sites not connected at the last selection
        self._said_norm_skipped = False

    # -- configure ---------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        nodes = self.select_nodes(grid, server_round, self.settings.fraction_train)
        if not nodes:  # Flower's sampling would wait forever for one
            return self._with_payload(TRAIN, server_round, [], arrays)
        messages = super().configure_train(server_round, arrays, config, SampledNodes(nodes))
        return self._with_payload(TRAIN, server_round, messages, arrays)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        nodes = self.select_nodes(grid, server_round, 1.0)
        if not nodes:
            return self._with_payload(EVALUATE, server_round, [], arrays)
        messages = super().configure_evaluate(server_round, arrays, config, SampledNodes(nodes))
        return self._with_payload(EVALUATE, server_round, messages, arrays)

    def select_nodes(self, grid: Grid, server_round: int, fraction: float) -> list[int]:
        """The sites asked this round (an overridable step): seeded by (run seed, round),
        among those connected once ``min_sites`` are or ``wait_timeout`` has passed; the
        federation's sites not connected then are in :attr:`offline`."""
        s = self.settings
        connected = wait_for_sites(grid, s.sites, s.min_sites, s.wait_timeout)
        self.offline = [n for n in sorted(s.sites, key=s.sites.__getitem__)
                        if n not in connected]
        return sample_sites(connected, s.sites, fraction, s.seed, server_round)

    def _with_payload(
        self, kind: str, server_round: int, messages: Iterable[Message], arrays: ArrayRecord
    ) -> list[Message]:
        """Encode the float32 global once and put it (with the norm stats) in every message."""
        messages = list(messages)
        self._sent[(kind, server_round)] = messages
        if not messages:
            return messages
        # float32 whatever the server step produced (Flower's FedOpt steps give float64)
        self._global = {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in arrays.items()}
        payload = codec.encode(self._global, self.settings.wire_dtype)
        self.downlink_bytes = payload.nbytes
        for msg in messages:  # Flower's strategies share one RecordDict: this is cheap
            msg.metadata.group_id = str(server_round)
            msg.content[ARRAYS] = payload.arrays
            msg.content[CODEC] = payload.meta
            msg.content[NORM_STATS] = self.settings.norm_stats
        self.extend_messages(kind, server_round, messages)
        if self.settings.guard is not None:
            self.settings.guard.sign_instructions(messages)
        return messages

    def extend_messages(self, kind: str, server_round: int, messages: list[Message]) -> None:
        """Add a strategy's own records to the round's messages (an overridable step; SCAFFOLD
        sends ``c``), before they are signed, so the signature covers them too."""

    # -- checks ------------------------------------------------------------------------------

    def replies(self, kind: str, server_round: int) -> RoundReplies:
        """Accepted replies and failures of one exchange, as ``aggregate_*`` judged them."""
        return self._replies.get((kind, server_round), RoundReplies())

    def _judge(self, kind: str, server_round: int, replies: Iterable[Message]) -> RoundReplies:
        # A reply names the message it answers; the message names the node it was sent to.
        # (A "node unavailable" error is sent by the SuperLink itself, so its source is not
        # the site.) Sites are named from the node, never from what a reply says about itself.
        routes = {
            m.metadata.message_id: m.metadata.dst_node_id
            for m in self._sent.get((kind, server_round), [])
        }
        judged = RoundReplies()
        for msg in replies:
            answered = msg.metadata.reply_to_message_id
            node = routes.get(answered, msg.metadata.src_node_id)
            site = self.settings.sites.get(node, f"node-{node}")
            if answered not in routes:  # never applied to a round it does not belong to
                judged.failures.append(Failure(
                    node, site, "stale", f"reply to message {answered!r}, not one of round "
                    f"{server_round}'s {kind} messages"))
                continue
            if msg.has_error():
                judged.failures.append(self.error_failure(msg, node, site))
                continue
            try:
                judged.accepted.append(self.check_reply(kind, server_round, msg, node, site))
            except ReplyRejected as err:
                judged.failures.append(Failure(node, site, err.kind, str(err), err.report))
                if err.report is None:
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        judged.refused_reports[site] = SiteReport.from_record(
                            msg.content.metric_records[METRICS])
        if kind == TRAIN:
            self.check_norms(judged)
        # Arrival order varies from run to run; float sums depend on order.
        judged.accepted.sort(key=lambda r: r.site)
        self._replies[(kind, server_round)] = judged
        return judged

    def error_failure(self, msg: Message, node: int, site: str) -> Failure:
        """An error reply as a failure: an expired message (Flower's codes 3 and 4: no reply
        before its TTL, which is the round's deadline) is a timeout, the rest errors."""
        reason = msg.error.reason or f"error code {msg.error.code}"
        if msg.error.code in (3, 4):  # MESSAGE_UNAVAILABLE, REPLY_MESSAGE_UNAVAILABLE
            limit = self.settings.round_timeout
            return Failure(node, site, "timeout",
                           f"no reply before the message expired (round-timeout={limit}s): "
                           f"{reason}")
        return Failure(node, site, "error", reason)

    def check_reply(
        self, kind: str, server_round: int, msg: Message, node: int, site: str
    ) -> AcceptedReply:
        """Accept a reply or raise :class:`ReplyRejected` (an overridable step)."""
        self.check_authenticity(kind, server_round, msg, node)
        try:
            report = SiteReport.from_record(msg.content.metric_records[METRICS])
        except (KeyError, TypeError, ValueError) as err:
            raise ReplyRejected("integrity", f"no usable '{METRICS}' record: {err}") from None
        notes = SiteNotes.from_record(msg.content.config_records.get(NOTES))
        self.check_site_outcome(kind, report, notes)
        payload = self.check_update(msg) if kind == TRAIN else None
        norm = self.check_values(payload) if payload is not None else None
        trajectory, note = self.read_trajectory(msg, site)
        return AcceptedReply(node, site, report, payload, trajectory=trajectory,
                             trajectory_note=note, update_norm=norm, notes=notes)

    def read_trajectory(self, msg: Message, site: str) -> tuple[Trajectory | None, str]:
        """The reply's trajectory, if it has one that checks out.

        A malformed trajectory costs the site its plot, not its update: the plot is for
        people, the update passed its own checks.
        """
        content = msg.content
        info = content.config_records.get(TRAJECTORY_INFO)
        if info is None:
            return None, ""
        if TRAJECTORY not in content.array_records:
            return None, KEPT_AT_SITE if info.get("kept-at-site") else "no trajectory arrays"
        try:
            return Trajectory.from_records(
                content.array_records[TRAJECTORY], info,
                self.settings.trajectory_frames, self.settings.action_dims,
            ), ""
        except TrajectoryError as err:
            log.warning("trajectory_refused", site=site, reason=str(err)[:300])
            return None, f"refused: {err}"

    def check_values(self, payload: codec.Payload) -> float:
        """The update's L2 norm, once every value is finite (else :class:`ReplyRejected`)."""
        scan = update_checks.scan(payload)
        if scan.nonfinite:
            raise ReplyRejected("nonfinite", f"update not finite: {scan.nonfinite}")
        return scan.norm

    def check_norms(self, judged: RoundReplies) -> None:
        """Move accepted updates whose norm is an outlier of this round's to the failures."""
        norms = {r.site: r.update_norm for r in judged.accepted if r.update_norm is not None}
        ratio = self.settings.max_update_norm_ratio
        few = 0 < len(norms) < update_checks.MIN_UPDATES_FOR_NORM_RULE
        if ratio > 0 and few and not self._said_norm_skipped:  # once, not every round
            log.info("norm_check_skipped", updates=len(norms),
                     needed=update_checks.MIN_UPDATES_FOR_NORM_RULE)
            self._said_norm_skipped = True
        outliers = update_checks.norm_outliers(norms, ratio)
        for reply in [r for r in judged.accepted if r.site in outliers]:
            judged.accepted.remove(reply)
            judged.refused_reports[reply.site] = reply.report
            judged.failures.append(Failure(reply.node_id, reply.site, "norm",
                                           outliers[reply.site]))

    def check_site_outcome(self, kind: str, report: SiteReport, notes: SiteNotes) -> None:
        """Refuse a train reply whose training failed at the site (its data, or an error after
        it had evaluated the global model): no update to aggregate, but the evaluation it
        reports stays with the failure (:attr:`RoundReplies.measured`)."""
        if kind == TRAIN and notes.train_error:
            raise ReplyRejected(notes.train_error_kind or "error", notes.train_error, report)

    def check_authenticity(self, kind: str, server_round: int, msg: Message, node: int) -> None:
        """The guard's identity, signature, replay and weight checks, before anything in the
        reply is decoded (:mod:`superlink.authenticity`). :meth:`_judge` has already matched
        the reply to one of round ``server_round``'s ``kind`` messages (else it is stale)."""
        if self.settings.guard is not None:
            self.settings.guard.check_reply(msg, node, kind, server_round)

    def check_update(self, msg: Message) -> codec.Payload:
        """The reply's update, once its digests, encoding, names, shapes and dtypes check out."""
        try:
            payload = codec.from_content(msg.content, ARRAYS, CODEC)
            codec.verify(payload)
            if payload.meta.get("encoding") != "update":
                raise ValueError("expected an update payload (local weights minus the global)")
            if payload.meta.get("wire-dtype") != self.settings.wire_dtype:
                raise ValueError(
                    f"wire dtype {payload.meta.get('wire-dtype')!r}, the run uses "
                    f"{self.settings.wire_dtype!r}"
                )
            codec.check_layout(payload, {k: v.shape for k, v in self._global.items()})
        except (ValueError, KeyError) as err:
            raise ReplyRejected("integrity", str(err)) from None
        return payload

    # -- aggregate ---------------------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The weighted mean of the accepted updates, added to the float32 global."""
        judged = self._judge(TRAIN, server_round, replies)
        if not judged.accepted or len(judged.accepted) < self.settings.min_replies:
            return None, None
        return self.weighted_mean(judged.accepted), self._train_metrics(judged.accepted)

    def weighted_mean(self, accepted: list[AcceptedReply]) -> ArrayRecord:
        """``global + sum_i w_i * update_i`` with ``w_i`` the sites' example shares.

        Read straight from each reply's wire bytes into one float32 accumulator: the same
        result (to float32 rounding) as decoding every reply and calling Flower's
        ``aggregate_arrayrecords``, without a float32 copy of any site's model.
        """
        return self.global_plus(self.mean_update(accepted))

    def mean_update(self, accepted: list[AcceptedReply]) -> dict[str, np.ndarray]:
        """``sum_i w_i * update_i`` (float32) with ``w_i`` the sites' example shares."""
        total = sum(r.report.num_examples for r in accepted)
        mean = {k: np.zeros_like(v) for k, v in self._global.items()}
        for reply in accepted:
            assert reply.payload is not None
            codec.accumulate(mean, reply.payload, reply.report.num_examples / total)
        return mean

    def global_plus(self, update: Mapping[str, np.ndarray], step: float = 1.0) -> ArrayRecord:
        """``global + step * update`` as the new global model (float32)."""
        return ArrayRecord(
            {k: codec.to_array(v + np.float32(step) * update[k]) for k, v in self._global.items()}
        )

    def round_summary(self, server_round: int) -> dict[str, Any]:
        """Numbers about the server step of ``server_round`` for the round's report."""
        return {}

    def _train_metrics(self, accepted: list[AcceptedReply]) -> MetricRecord:
        records = [
            RecordDict({METRICS: MetricRecord({"num-examples": r.report.num_examples,
                                               "train-loss": r.report.train_loss})})
            for r in accepted
        ]
        return self.train_metrics_aggr_fn(records, self.weighted_by_key)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Per-site results are in :meth:`replies`; the run report weighs them itself."""
        self._judge(EVALUATE, server_round, replies)
        return None

    # -- state -------------------------------------------------------------------------------

    def export_state(self) -> tuple[dict[str, np.ndarray], state.Layout]:
        """The server state a resumed run needs (see :mod:`superlink.strategy.state`)."""
        return state.export_state(self, self.state_attributes)

    def restore_state(self, arrays: Mapping[str, np.ndarray], layout: state.Layout) -> None:
        state.restore_state(self, arrays, layout)
