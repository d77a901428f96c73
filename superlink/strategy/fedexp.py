"""FedExP (Jhunjhunwala, Wang and Joshi, ICLR 2023): FedAvg with an extrapolated server step.

FedAvg moves the global model by the sites' mean update ``d = sum_i w_i d_i``. When the sites'
updates point in different directions (heterogeneous data), ``d`` is much shorter than the
updates themselves and FedAvg crawls. FedExP takes a server step

    eta = max(1, sum_i w_i ||d_i||^2 / (2 (||d||^2 + epsilon)))

and moves the global by ``eta * d``: eta is 1 when the sites agree (identical updates give
exactly 1/2 before the max) and up to M/2 for M orthogonal updates. ``w_i`` are the sites'
example shares; with equal shares (1/M) this is the paper's formula; the shares are capped as every
strategy's are (``max-weight-ratio``). Server-side only: no extra
bytes, no site state. ``epsilon`` (``fedexp-epsilon``) keeps eta bounded when ``d`` nearly
vanishes. The step of every round is in its report (``server_step``) and the log.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from common import codec
from common.logs import get_logger
from superlink.strategy.codec_fedavg import CodecFedAvg, ExchangeSettings
from superlink.strategy.flower_strategies import WithExchangeSettings
from superlink.strategy.replies import AcceptedReply

log = get_logger("zk0.superlink")


def fedexp_step(weighted_sq_norms: float, mean_sq_norm: float, epsilon: float) -> float:
    """``max(1, sum_i w_i ||d_i||^2 / (2 (||d||^2 + epsilon)))`` (1 if both vanish)."""
    denominator = 2.0 * (mean_sq_norm + epsilon)
    if denominator <= 0.0:
        return 1.0
    return max(1.0, weighted_sq_norms / denominator)


class FedExP(WithExchangeSettings, CodecFedAvg):
    """FedAvg whose server step is FedExP's extrapolation (see the module docstring)."""

    def __init__(self, settings: ExchangeSettings, epsilon: float = 1e-3, **params: Any) -> None:
        super().__init__(settings, **params)
        self.epsilon = epsilon
        self.server_steps: dict[int, float] = {}  # round -> eta (report only; no state)
        self._round = 0

    def aggregate_train(self, server_round, replies):
        self._round = server_round
        return super().aggregate_train(server_round, replies)

    def weighted_mean(self, accepted: list[AcceptedReply]) -> ArrayRecord:
        shares = self.shares(accepted)
        spread = sum(
            shares[r.site] * codec.squared_norm(r.payload)  # type: ignore[arg-type]
            for r in accepted
        )
        mean = self.mean_update(accepted)
        mean_sq = sum(float(np.dot(v.ravel(), v.ravel())) for v in mean.values())
        step = fedexp_step(spread, mean_sq, self.epsilon)
        self.server_steps[self._round] = step
        log.info("fedexp_step", round=self._round, step=round(step, 4), sites=len(accepted))
        return self.global_plus(mean, step)

    def round_summary(self, server_round: int) -> dict[str, Any]:
        step = self.server_steps.get(server_round)
        summary = super().round_summary(server_round)
        return summary if step is None else {**summary, "server_step": step}
