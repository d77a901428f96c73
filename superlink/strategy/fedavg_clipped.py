"""FedAvg with norm clipping (Sun et al. 2019, "Can you really backdoor federated learning?").

Before averaging, every accepted update longer than ``clip-norm-ratio`` x the median norm of
the round's accepted updates is scaled down to that length: a site keeps its direction but no
more than a typical site's step. Unlike the norm rule (``max-update-norm-ratio``), which drops
an update far out of line, clipping bounds what every update can do, with no threshold to
cross. Weighted as FedAvg (capped weights, ``max-weight-ratio``); the scaled sites and their
factors are in the round's report (``clipped``) and the log.
"""

from __future__ import annotations

import statistics
from typing import Any

from flwr.app import ArrayRecord

from common.logs import get_logger
from superlink.strategy.codec_fedavg import CodecFedAvg, ExchangeSettings
from superlink.strategy.flower_strategies import WithExchangeSettings
from superlink.strategy.replies import AcceptedReply

log = get_logger("zk0.superlink")


class FedAvgClipped(WithExchangeSettings, CodecFedAvg):
    """FedAvg of the updates clipped to ``clip_ratio`` x the round's median norm."""

    def __init__(self, settings: ExchangeSettings, clip_ratio: float = 1.0, **params: Any) -> None:
        super().__init__(settings, **params)
        self.clip_ratio = clip_ratio
        self.clipped: dict[int, dict[str, float]] = {}  # round -> site -> factor (report only)
        self._bound = 0.0
        self._round = 0

    def aggregate_train(self, server_round, replies):
        self._round = server_round
        return super().aggregate_train(server_round, replies)

    def weighted_mean(self, accepted: list[AcceptedReply]) -> ArrayRecord:
        norms = [r.update_norm for r in accepted if r.update_norm is not None]
        self._bound = self.clip_ratio * statistics.median(norms) if norms else 0.0
        factors = {r.site: self.scale(r) for r in accepted}
        self.clipped[self._round] = {s: f for s, f in factors.items() if f < 1.0}
        for site, factor in self.clipped[self._round].items():
            log.info("update_clipped", round=self._round, site=site, factor=round(factor, 4),
                     bound=self._bound)
        return super().weighted_mean(accepted)

    def scale(self, reply: AcceptedReply) -> float:
        norm = reply.update_norm or 0.0
        return self._bound / norm if norm > self._bound > 0 else 1.0

    def round_summary(self, server_round: int) -> dict[str, Any]:
        summary = super().round_summary(server_round)
        clipped = self.clipped.get(server_round)
        return {**summary, "clipped": clipped} if clipped else summary
