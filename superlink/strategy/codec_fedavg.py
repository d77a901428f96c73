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
  identity and signature, then every record parsed through one validating model,
  :mod:`superlink.reply_model`; weight, digest, encoding, names/shapes/dtypes against the
  global model, finite values) and the accepted updates through
  :meth:`CodecFedAvg.check_norms` (norm against the round's median or, with fewer than three
  updates, the others' and earlier rounds', :mod:`superlink.strategy.update_checks`); what
  fails is recorded as a :class:`~superlink.strategy.replies.Failure` and left out. With fewer
  than ``min_replies`` accepted updates the round does not move the model nor any state
  (``None``, so Flower's server step is skipped); otherwise the mean of the accepted updates,
  each weighing at most ``max_weight_ratio`` x the median of the others
  (:meth:`CodecFedAvg.aggregation_weights`), is added to the float32 global straight from the
  wire bytes.

Flower's server optimizers derive from ``FedAvg`` and call ``super().aggregate_train`` for the
weighted mean, then take their own step. So a zk0 strategy is Flower's class with
``CodecFedAvg`` behind it (``class FedAvgM(flwr.FedAvgM, CodecFedAvg)``): Flower's FedAvgM,
FedAdam, ... steps run unchanged on a mean that every strategy computes the same checked way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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
    NORM_STATS,
    SiteNotes,
    SiteReport,
)
from superlink.reply_model import Expected, SiteReply, parse_reply
from superlink.strategy.node_selection import SampledNodes, sample_sites, wait_for_sites
from superlink.strategy.replies import AcceptedReply, Failure, ReplyRejected, RoundReplies

if TYPE_CHECKING:
    from superlink.authenticity import FederationGuard

TRAIN, EVALUATE = "train", "evaluate"

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
    max_weight_ratio: float = 0.0  # see update_checks.capped_weights; 0 = off
    # SiteReport field -> the largest value a reply may report (e.g. steps <= local-steps)
    report_limits: Mapping[str, int] = field(default_factory=dict)
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
    state_attributes: tuple[str, ...] = (*state.FLOWER_STATE_ATTRIBUTES, "accepted_norms")
    #: Whether a train reply carries a control-variate delta next to its update (SCAFFOLD).
    control_delta: bool = False

    def __init__(self, **flower_params: Any) -> None:
        super().__init__(**flower_params)
        self.downlink_bytes = 0  # bytes of the model as encoded for the latest message
        self._global: dict[str, np.ndarray] = {}  # float32 weights the replies refer to
        self._sent: dict[tuple[str, int], list[Message]] = {}
        self._replies: dict[tuple[str, int], RoundReplies] = {}
        self.offline: list[int] = []  # the federation's sites not connected at the last selection
        # "update"/"control" -> rows (round, norm) accepted in the last aggregated rounds
        self.accepted_norms: dict[str, np.ndarray] = {}
        self._weights: dict[str, float] = {}  # the aggregation weight of each accepted site
        self._capped: dict[int, dict[str, str]] = {}  # round -> site -> why its weight was capped

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
        """Accept a reply or raise :class:`ReplyRejected`: identity and signature first, then
        every record through the reply model, then the weight, then the content
        (:meth:`accept`). A refusal after the parse keeps the site's report: what it measured
        of the global model stands even when its update is dropped."""
        self.check_authenticity(kind, server_round, msg, node)
        reply = parse_reply(msg, self.expected(kind, server_round))
        self.check_weight(kind, node, reply.metrics)
        try:
            return self.accept(kind, reply, node, site)
        except ReplyRejected as err:
            raise ReplyRejected(err.kind, str(err), err.report or reply.metrics) from None

    def expected(self, kind: str, server_round: int) -> Expected:
        """What a ``kind`` reply of ``server_round`` may hold (an overridable step)."""
        s = self.settings
        return Expected(kind, server_round, control=kind == TRAIN and self.control_delta,
                        trajectory_frames=s.trajectory_frames, action_dims=s.action_dims,
                        limits=s.report_limits)

    def accept(self, kind: str, reply: SiteReply, node: int, site: str) -> AcceptedReply:
        """The parsed reply as an accepted one, once its content checks out (overridable)."""
        self.check_site_outcome(kind, reply.metrics, reply.notes)
        payload = self.check_update(reply.update) if reply.update is not None else None
        norm = self.check_values(payload) if payload is not None else None
        trajectory, note = reply.plotted
        return AcceptedReply(node, site, reply.metrics, payload, trajectory=trajectory,
                             trajectory_note=note, update_norm=norm, notes=reply.notes)

    def check_values(self, payload: codec.Payload) -> float:
        """The update's L2 norm, once every value is finite (else :class:`ReplyRejected`)."""
        scan = update_checks.scan(payload)
        if scan.nonfinite:
            raise ReplyRejected("nonfinite", f"update not finite: {scan.nonfinite}")
        return scan.norm

    def check_norms(self, judged: RoundReplies) -> None:
        """Move accepted replies whose update (or control-variate delta) norm is an outlier to
        the failures: against this round's median, or with fewer than three updates against
        the others' and the norms accepted in earlier rounds."""
        ratio = self.settings.max_update_norm_ratio
        for what, attr in (("update", "update_norm"), ("control", "control_norm")):
            norms = {r.site: getattr(r, attr) for r in judged.accepted
                     if getattr(r, attr) is not None}
            history = self.accepted_norms.get(what, np.empty((0, 2)))[:, 1].tolist()
            label = "control-variate delta" if what == "control" else what
            outliers = update_checks.norm_outliers(norms, ratio, history, label)
            for reply in [r for r in judged.accepted if r.site in outliers]:
                judged.accepted.remove(reply)
                judged.failures.append(Failure(reply.node_id, reply.site, "norm",
                                               outliers[reply.site], reply.report))

    def check_site_outcome(self, kind: str, report: SiteReport, notes: SiteNotes) -> None:
        """Refuse a train reply whose training failed at the site (its data, or an error after
        it had evaluated the global model): no update to aggregate, but the evaluation it
        reports stays with the failure (:attr:`RoundReplies.measured`)."""
        if kind == TRAIN and notes.train_error:
            raise ReplyRejected(notes.train_error_kind or "error", notes.train_error, report)

    def check_authenticity(self, kind: str, server_round: int, msg: Message, node: int) -> None:
        """The guard's identity, signature and replay checks, before anything in the reply is
        parsed (:mod:`superlink.authenticity`). :meth:`_judge` has already matched the reply
        to one of round ``server_round``'s ``kind`` messages (else it is stale)."""
        if self.settings.guard is not None:
            self.settings.guard.check_signed(msg, node, kind, server_round)

    def check_weight(self, kind: str, node: int, report: SiteReport) -> None:
        """The guard's bound on ``num-examples``: the frames the site declared at stage 0."""
        if self.settings.guard is not None:
            self.settings.guard.check_weight(kind, node, report)

    def check_update(self, payload: codec.Payload) -> codec.Payload:
        """``payload`` (an update or a control delta), once its digests, encoding, names,
        shapes and dtypes check out against the global model (:class:`ReplyRejected`,
        ``integrity``, otherwise)."""
        meta = payload.meta
        try:
            codec.verify(payload)
            if meta["encoding"] != "update":
                raise codec.PayloadIntegrityError(
                    "expected an update payload (local weights minus the global)")
            if meta["wire-dtype"] != self.settings.wire_dtype:
                raise codec.PayloadIntegrityError(
                    f"wire dtype {meta['wire-dtype']!r}, the run uses "
                    f"{self.settings.wire_dtype!r}")
            codec.check_layout(payload, {k: v.shape for k, v in self._global.items()})
        except codec.PayloadIntegrityError as err:
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
        self._weights = self.aggregation_weights(server_round, judged.accepted)
        arrays = self.weighted_mean(judged.accepted)
        self.remember_norms(server_round, judged.accepted)  # state moves with the aggregate only
        return arrays, self._train_metrics(judged.accepted)

    def aggregation_weights(
        self, server_round: int, accepted: list[AcceptedReply]
    ) -> dict[str, float]:
        """Each accepted site's weight: its ``num-examples``, capped at ``max_weight_ratio``
        x the median of the others' (:func:`update_checks.capped_weights`; logged and in the
        round's report when the cap bites)."""
        weights, capped = update_checks.capped_weights(
            {r.site: float(r.report.num_examples) for r in accepted},
            self.settings.max_weight_ratio)
        for site, reason in capped.items():
            log.warning("weight_capped", round=server_round, site=site, reason=reason)
        self._capped[server_round] = capped
        return weights

    def remember_norms(self, server_round: int, accepted: list[AcceptedReply]) -> None:
        """Keep the round's accepted norms: the norm rule's reference when a later round has
        fewer than three updates."""
        for what, attr in (("update", "update_norm"), ("control", "control_norm")):
            norms = [getattr(r, attr) for r in accepted if getattr(r, attr) is not None]
            if norms:
                self.accepted_norms[what] = update_checks.remember(
                    self.accepted_norms.get(what, np.empty((0, 2))), server_round, norms)

    def weighted_mean(self, accepted: list[AcceptedReply]) -> ArrayRecord:
        """``global + sum_i w_i * update_i`` with ``w_i`` the sites' (capped) weight shares.

        Read straight from each reply's wire bytes into one float32 accumulator: the same
        result (to float32 rounding) as decoding every reply and calling Flower's
        ``aggregate_arrayrecords``, without a float32 copy of any site's model.
        """
        return self.global_plus(self.mean_update(accepted))

    def shares(self, accepted: list[AcceptedReply]) -> dict[str, float]:
        """Each accepted site's share of the round's weighted mean (they sum to 1)."""
        weights = {r.site: self._weights.get(r.site, float(r.report.num_examples))
                   for r in accepted}
        total = sum(weights.values())
        return {site: w / total for site, w in weights.items()}

    def mean_update(self, accepted: list[AcceptedReply]) -> dict[str, np.ndarray]:
        """``sum_i w_i * update_i`` (float32) with ``w_i`` the sites' shares."""
        shares = self.shares(accepted)
        mean = {k: np.zeros_like(v) for k, v in self._global.items()}
        for reply in accepted:
            assert reply.payload is not None
            codec.accumulate(mean, reply.payload, self.scale(reply) * shares[reply.site])
        return mean

    def scale(self, reply: AcceptedReply) -> float:
        """What a reply's update is multiplied by before it is averaged (1; norm clipping
        shrinks it)."""
        return 1.0

    def global_plus(self, update: Mapping[str, np.ndarray], step: float = 1.0) -> ArrayRecord:
        """``global + step * update`` as the new global model (float32)."""
        return ArrayRecord(
            {k: codec.to_array(v + np.float32(step) * update[k]) for k, v in self._global.items()}
        )

    def round_summary(self, server_round: int) -> dict[str, Any]:
        """Numbers about the server step of ``server_round`` for the round's report
        (subclasses add theirs to this)."""
        capped = self._capped.get(server_round)
        return {"weight_capped": capped} if capped else {}

    def _train_metrics(self, accepted: list[AcceptedReply]) -> MetricRecord:
        shares = self.shares(accepted)
        records = [
            RecordDict({"metrics": MetricRecord({"num-examples": shares[r.site],
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
