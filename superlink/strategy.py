"""The aggregation strategy: Flower's own strategies behind zk0's codec and reply checks.

Flower's FedProx (default), FedAvg, FedAvgM, FedAdam, FedYogi and FedAdagrad aggregate plain
float32 ArrayRecords and fail the whole run on one malformed reply. zk0's messages carry
encoded half-precision updates with digests, so :class:`CodecStrategy` adds two small steps
around the Flower strategy it wraps:

- ``configure_train``/``configure_evaluate``: encode the float32 global weights once for the
  wire and attach the federation's normalization stats;
- ``aggregate_train``: verify and decode each reply into float32 weights, set aside (and
  record) replies that failed or do not verify, then hand the clean replies to Flower's own
  aggregation, so server optimizers (FedAvgM, FedAdam, ...) work unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
)

from common import codec
from common.protocol import ARRAYS, CODEC, METRICS, NORM_STATS, SITE, SiteReport
from common.settings import RunConfig


@dataclass(frozen=True)
class Failure:
    """A site that did not contribute to a round, and why."""

    node_id: int
    site: str
    kind: str  # "error" | "integrity" | "timeout"
    reason: str


@dataclass
class RoundReplies:
    """What the sites sent in one exchange, before and after checks."""

    reports: dict[str, SiteReport] = field(default_factory=dict)  # site name -> report
    failures: list[Failure] = field(default_factory=list)
    uplink_bytes: dict[str, int] = field(default_factory=dict)


def site_of(msg: Message, fallback: str) -> str:
    if msg.has_content() and SITE in msg.content.config_records:
        return str(msg.content.config_records[SITE]["site-name"])
    return fallback


class CodecStrategy(Strategy):
    """Wrap a Flower strategy with zk0's wire codec; see the module docstring."""

    def __init__(self, inner: FedAvg, wire_dtype: str, norm_stats: ArrayRecord) -> None:
        self.inner = inner
        self.wire_dtype = wire_dtype
        self.norm_stats = norm_stats
        self.last = RoundReplies()
        self.downlink_bytes = 0
        self._global: dict[str, np.ndarray] = {}
        # node id -> site name (from the stats stage); message id -> destination node id (set
        # by whoever pushes), so a "node unavailable" error sent by the SuperLink itself can
        # still be pinned on the site it was meant for.
        self.node_sites: dict[int, str] = {}
        self.routes: dict[str, int] = {}

    # Strategy interface -------------------------------------------------------------------
    def summary(self) -> None:
        self.inner.summary()

    def _encoded(self, messages: Iterable[Message], arrays: ArrayRecord) -> list[Message]:
        messages = list(messages)
        if not messages:
            return messages
        self._global = {k: v.numpy() for k, v in arrays.items()}
        payload = codec.encode(self._global, self.wire_dtype)
        self.downlink_bytes = payload.nbytes
        for msg in messages:  # Flower's strategies share one RecordDict: this is cheap
            msg.content[ARRAYS] = payload.arrays
            msg.content[CODEC] = payload.meta
            msg.content[NORM_STATS] = self.norm_stats
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        return self._encoded(self.inner.configure_train(server_round, arrays, config, grid), arrays)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        messages = self.inner.configure_evaluate(server_round, arrays, config, grid)
        return self._encoded(messages, arrays)

    def _check_replies(
        self, replies: Iterable[Message], decode: bool, verify: bool = False
    ) -> list[Message]:
        """Record each reply's report or failure; return the usable ones (decoded if asked,
        or only verified and checked against the global model's names and shapes)."""
        self.last = RoundReplies()
        usable = []
        for msg in replies:
            node = self.routes.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            site = site_of(msg, self.node_sites.get(node, f"node-{node}"))
            if msg.has_error():
                self.last.failures.append(Failure(node, site, "error", msg.error.reason or ""))
                continue
            try:
                report = SiteReport.from_record(msg.content.metric_records[METRICS])
                if verify:
                    payload = codec.from_content(msg.content, ARRAYS, CODEC)
                    codec.verify(payload)
                    if payload.meta.get("encoding") != "update":
                        raise ValueError("expected an update payload")
                    shapes = {k: tuple(v.shape) for k, v in payload.arrays.items()}
                    if shapes != {k: v.shape for k, v in self._global.items()}:
                        raise ValueError("payload names or shapes differ from the global model's")
                    self.last.uplink_bytes[site] = payload.nbytes
                elif decode:
                    payload = codec.from_content(msg.content, ARRAYS, CODEC)
                    weights = codec.decode(payload, base=self._global)
                    self.last.uplink_bytes[site] = payload.nbytes
                    msg.content = RecordDict(
                        {
                            ARRAYS: ArrayRecord({k: codec.to_array(v) for k, v in weights.items()}),
                            METRICS: MetricRecord(
                                {"num-examples": report.num_examples,
                                 "train-loss": report.train_loss}
                            ),
                        }
                    )
            except (ValueError, KeyError) as err:
                self.last.failures.append(Failure(node, site, "integrity", str(err)))
                continue
            self.last.reports[site] = report
            usable.append(msg)
        return usable

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        step = self._server_step()
        if step is not None:
            arrays, metrics = self._weighted_mean(replies, step)
            if arrays is not None and isinstance(self.inner, FedAvgM):
                self.inner.current_arrays = arrays  # as Flower's FedAvgM keeps it
            return arrays, metrics
        usable = self._check_replies(replies, decode=True)
        if not usable:
            return None, None
        return self.inner.aggregate_train(server_round, usable)

    def _server_step(self) -> float | None:
        """The server step when the new global is ``global + step * mean update``, else None.

        True for FedAvg/FedProx (step 1) and for FedAvgM without momentum (step = its server
        learning rate: ``old - lr * (old - mean)``); the others keep state and go through
        Flower's own ``aggregate_train``.
        """
        if type(self.inner) in (FedAvg, FedProx):
            return 1.0
        if type(self.inner) is FedAvgM and self.inner.server_momentum == 0.0:
            return float(self.inner.server_learning_rate)
        return None

    def _weighted_mean(self, replies: Iterable[Message], step: float = 1.0):
        """``global + step * sum_i w_i * update_i``, from the wire bytes, in place.

        The same result (to float32 rounding) as decoding every reply to float32 weights and
        calling Flower's aggregation, which copies each site's arrays three times and makes a
        temporary per term; this reads each reply's wire bytes once.
        """
        usable = self._check_replies(replies, decode=False, verify=True)
        if not usable:
            return None, None
        reports = [SiteReport.from_record(m.content.metric_records[METRICS]) for m in usable]
        total = sum(r.num_examples for r in reports)
        mean = {k: v.copy() for k, v in self._global.items()}
        for msg, report in zip(usable, reports, strict=True):
            payload = codec.from_content(msg.content, ARRAYS, CODEC)
            codec.accumulate(mean, payload, step * report.num_examples / total)
        metrics = self.inner.train_metrics_aggr_fn(
            [
                RecordDict({METRICS: MetricRecord({"num-examples": r.num_examples,
                                                   "train-loss": r.train_loss})})
                for r in reports
            ],
            self.inner.weighted_by_key,
        )
        return ArrayRecord({k: codec.to_array(v) for k, v in mean.items()}), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Per-site results stay in ``last``; the weighted mean is computed by the report."""
        self._check_replies(replies, decode=False)
        return None


def make_strategy(run: RunConfig, norm_stats: ArrayRecord) -> CodecStrategy:
    """The Flower strategy named by ``run.strategy``, wrapped with zk0's codec."""
    common = {
        "fraction_train": run.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": run.min_sites,
    }
    inner: FedAvg
    match run.strategy:
        case "fedprox":
            inner = FedProx(proximal_mu=run.proximal_mu, **common)
        case "fedavg":
            inner = FedAvg(**common)
        case "fedavgm":
            inner = FedAvgM(
                server_learning_rate=run.server_lr, server_momentum=run.server_momentum, **common
            )
        case "fedadam":
            inner = FedAdam(eta=run.server_lr, **common)
        case "fedyogi":
            inner = FedYogi(eta=run.server_lr, **common)
        case "fedadagrad":
            inner = FedAdagrad(eta=run.server_lr, **common)
    return CodecStrategy(inner, run.wire_dtype, norm_stats)
