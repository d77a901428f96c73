"""Flower's own strategies, each over zk0's codec (:class:`CodecFedAvg` behind it).

Each class is Flower's, unchanged, with ``CodecFedAvg`` between it and ``FedAvg`` in the MRO:
Flower's ``super().aggregate_train`` then returns the checked weighted mean of the sites'
updates, and Flower's own server step (FedAvgM's momentum, FedAdam's moments, ...) runs on it.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp import strategy as flwr

from superlink.strategy.codec_fedavg import (
    ADDRESS_EVERY_SELECTED_NODE,
    CodecFedAvg,
    ExchangeSettings,
)


class WithExchangeSettings:
    """First in a zk0 strategy's bases: takes zk0's settings, then Flower's own parameters."""

    def __init__(self, settings: ExchangeSettings, **params: Any) -> None:
        self.settings = settings
        super().__init__(**ADDRESS_EVERY_SELECTED_NODE, **params)


class FedAvg(WithExchangeSettings, CodecFedAvg):
    """Federated averaging (McMahan et al. 2017): the new global is the weighted mean."""


class FedProx(WithExchangeSettings, flwr.FedProx, CodecFedAvg):
    """FedAvg that sends ``proximal-mu`` with every train message (sites add the term)."""


class FedAvgM(WithExchangeSettings, flwr.FedAvgM, CodecFedAvg):
    """FedAvg with a server step (``server_learning_rate``) and server momentum."""


class FedAdam(WithExchangeSettings, flwr.FedAdam, CodecFedAvg):
    """FedAvg's mean update as the gradient of a server-side Adam (Reddi et al. 2021)."""


class FedYogi(WithExchangeSettings, flwr.FedYogi, CodecFedAvg):
    """FedAvg's mean update as the gradient of a server-side Yogi."""


class FedAdagrad(WithExchangeSettings, flwr.FedAdagrad, CodecFedAvg):
    """FedAvg's mean update as the gradient of a server-side Adagrad."""
