"""FedProx with a decoupled proximal step: the pull toward the global weights outside AdamW.

FedProx (Li et al. 2018) adds ``(mu / 2) ||w - w_global||^2`` to each site's loss; Flower's
``FedProx`` broadcasts ``mu`` and the site adds the term's gradient (``strategy = "fedprox"``).
Under AdamW that gradient is rescaled per coordinate by the second moment, so the pull is
strongest where gradients are small and weakest where the site drifts most: the defect that made
decoupled weight decay (AdamW) necessary. Here the site instead applies, after each optimizer
step, ``w -= lr * mu * (w - w_global)`` (:func:`supernode.training.decoupled_proximal_step`):
every coordinate moves the same fraction ``lr * mu`` of its distance to the global weights.
``mu`` is therefore on another scale than classic FedProx's (a rate per unit of lr: with lr
3e-3, mu = 10 pulls 3 % of the distance back per step), and ``lr * mu`` must stay below 1.
"""

from __future__ import annotations

from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flwr

from superlink.strategy.codec_fedavg import CodecFedAvg
from superlink.strategy.flower_strategies import WithExchangeSettings


class FedProxDecoupled(WithExchangeSettings, flwr.FedProx, CodecFedAvg):
    """Flower's FedProx whose train messages ask for the decoupled proximal step."""

    def configure_train(
        self, server_round: int, arrays, config: ConfigRecord, grid: Grid
    ):
        config["proximal-step"] = "decoupled"
        return super().configure_train(server_round, arrays, config, grid)
