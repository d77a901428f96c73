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
  report, digest, encoding, names/shapes/dtypes against the global model); what fails is
  recorded as a :class:`~superlink.strategy.replies.Failure` and left out, and the weighted mean
  of the accepted updates is added to the float32 global straight from the wire bytes.

Flower's server optimizers derive from ``FedAvg`` and call ``super().aggregate_train`` for the
weighted mean, then take their own step. So a zk0 strategy is Flower's class with
``CodecFedAvg`` behind it (``class FedAvgM(flwr.FedAvgM, CodecFedAvg)``): Flower's FedAvgM,
FedAdam, ... steps run unchanged on a mean that every strategy computes the same checked way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common import codec
from common.protocol import ARRAYS, CODEC, METRICS, NORM_STATS, SiteReport
from superlink.strategy.node_selection import SampledNodes, select_nodes
from superlink.strategy.replies import AcceptedReply, Failure, ReplyRejected, RoundReplies

TRAIN, EVALUATE = "train", "evaluate"

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
    min_sites: int = 1  # a round waits until this many of the sites are connected
    seed: int = 0


class CodecFedAvg(FedAvg):
    """FedAvg over zk0's codec and reply checks; see the module docstring.

    Concrete strategies get ``self.settings`` from ``WithExchangeSettings`` (see
    :mod:`superlink.strategy.flower_strategies`); this class only adds per-round state.
    """

    settings: ExchangeSettings

    def __init__(self, **flower_params: Any) -> None:
        super().__init__(**flower_params)
        self.downlink_bytes = 0  # bytes of the model as encoded for the latest message
        self._global: dict[str, np.ndarray] = {}  # float32 weights the replies refer to
        self._sent: dict[tuple[str, int], list[Message]] = {}
        self._replies: dict[tuple[str, int], RoundReplies] = {}

    # -- configure ---------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        nodes = self.select_nodes(grid, server_round, self.settings.fraction_train)
        messages = super().configure_train(server_round, arrays, config, SampledNodes(nodes))
        return self._with_payload(TRAIN, server_round, messages, arrays)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        nodes = self.select_nodes(grid, server_round, 1.0)
        messages = super().configure_evaluate(server_round, arrays, config, SampledNodes(nodes))
        return self._with_payload(EVALUATE, server_round, messages, arrays)

    def select_nodes(self, grid: Grid, server_round: int, fraction: float) -> list[int]:
        """The sites asked this round (an overridable step): seeded by (run seed, round)."""
        s = self.settings
        return select_nodes(grid, s.sites, fraction, s.seed, server_round, s.min_sites)

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
            msg.content[ARRAYS] = payload.arrays
            msg.content[CODEC] = payload.meta
            msg.content[NORM_STATS] = self.settings.norm_stats
        return messages

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
            node = routes.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            site = self.settings.sites.get(node, f"node-{node}")
            if msg.has_error():
                reason = msg.error.reason or f"error code {msg.error.code}"
                judged.failures.append(Failure(node, site, "error", reason))
                continue
            try:
                judged.accepted.append(self.check_reply(kind, msg, node, site))
            except ReplyRejected as err:
                judged.failures.append(Failure(node, site, err.kind, str(err)))
        # Arrival order varies from run to run; float sums depend on order.
        judged.accepted.sort(key=lambda r: r.site)
        self._replies[(kind, server_round)] = judged
        return judged

    def check_reply(self, kind: str, msg: Message, node: int, site: str) -> AcceptedReply:
        """Accept a reply or raise :class:`ReplyRejected` (an overridable step)."""
        try:
            report = SiteReport.from_record(msg.content.metric_records[METRICS])
        except (KeyError, TypeError, ValueError) as err:
            raise ReplyRejected("integrity", f"no usable '{METRICS}' record: {err}") from None
        payload = self.check_update(msg) if kind == TRAIN else None
        return AcceptedReply(node, site, report, payload)

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
        if not judged.accepted:
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

    # -- state (resume) ----------------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """What a strategy carries from round to round beyond the global weights, as plain named
        arrays (saved next to each checkpoint, restored on resume); FedAvg carries nothing."""
        return {}

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_arrays` (a resumed run, before its first round)."""

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
