"""Coordinate-wise median (Yin et al. 2018) over zk0's codec: Flower's ``FedMedian``.

Per parameter and coordinate the median of the sites' updates (``np.median``, as Flower's
``FedMedian``): fewer than half of the sites cannot move any coordinate beyond the honest
sites' range. With two sites the median is their mean. See :mod:`.coordinate_wise` for how it
sits over the codec.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp import strategy as flwr

from superlink.strategy.coordinate_wise import CoordinateWise
from superlink.strategy.flower_strategies import WithExchangeSettings


class FedMedian(WithExchangeSettings, CoordinateWise, flwr.FedMedian):
    """Flower's FedMedian on the checked updates."""

    def reduce(self, stacked: np.ndarray) -> np.ndarray:
        return np.median(stacked, axis=0)
