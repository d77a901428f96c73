"""DiLoCo's outer optimizer (Douillard et al. 2023): Nesterov momentum on the sites' mean update.

Each round the sites run their inner optimizer (AdamW, ``local-steps`` steps) from the global
weights; the server treats ``g = -(sum_i w_i update_i)`` (global minus the mean of the sites'
weights) as a gradient and takes one step of SGD with Nesterov momentum, as PyTorch's
``torch.optim.SGD(nesterov=True)`` does::

    v      <- mu * v + g
    global <- global - lr * (g + mu * v)

DiLoCo's published outer optimizer is ``lr = 0.7``, ``mu = 0.9`` (with 500 inner AdamW steps per
round); it matched synchronous data-parallel training while communicating ~500x less. Flower's
FedAvgM has heavy-ball momentum only (``global - lr * v``); Nesterov's look-ahead ``g + mu * v``
reacts to a new direction in the same round instead of after the momentum has turned.
``server-lr`` is the outer lr and ``server-momentum`` the outer momentum; the momentum buffer is
server state (``state_attributes``), saved with every checkpoint for resume. Like every zk0
strategy it moves only on an accepted aggregate: a failed round leaves ``v`` as it was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from superlink.strategy.codec_fedavg import CodecFedAvg, ExchangeSettings
from superlink.strategy.flower_strategies import WithExchangeSettings
from superlink.strategy.replies import AcceptedReply


def nesterov_step(
    mean_update: dict[str, np.ndarray], velocity: dict[str, np.ndarray], momentum: float
) -> dict[str, np.ndarray]:
    """Update ``velocity`` in place (``v <- mu * v + d``, in the update's sign) and return the
    step direction ``d + mu * v`` (the global model moves by ``lr`` times it)."""
    step = {}
    for name, d in mean_update.items():
        v = velocity.setdefault(name, np.zeros_like(d))
        v *= np.float32(momentum)
        v += d
        step[name] = d + np.float32(momentum) * v
    return step


class DiLoCo(WithExchangeSettings, CodecFedAvg):
    """The sites' checked weighted mean update, applied through outer Nesterov SGD."""

    state_attributes = (*CodecFedAvg.state_attributes, "outer_velocity")

    def __init__(
        self, settings: ExchangeSettings, server_learning_rate: float = 0.7,
        server_momentum: float = 0.9, **params: Any,
    ) -> None:
        super().__init__(settings, **params)
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self.outer_velocity: dict[str, np.ndarray] = {}  # v, in the update's sign (float32)

    def weighted_mean(self, accepted: list[AcceptedReply]) -> ArrayRecord:
        step = nesterov_step(self.mean_update(accepted), self.outer_velocity,
                             self.server_momentum)
        return self.global_plus(step, self.server_learning_rate)
