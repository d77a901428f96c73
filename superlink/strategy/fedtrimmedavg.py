"""Coordinate-wise trimmed mean (Yin et al. 2018) over zk0's codec: Flower's ``FedTrimmedAvg``.

Per parameter and coordinate, the largest and the smallest ``trim-beta`` share of the sites'
updates are dropped and the rest averaged (Flower's ``trim_mean``): a site can move the global
model only as far as the sites it hides among. ``int(beta x sites)`` are cut from each side, so
with ``beta = 0.2`` nothing is trimmed below 5 sites (then it is the unweighted mean). See
:mod:`.coordinate_wise` for how it sits over the codec.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp import strategy as flwr
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from superlink.strategy.coordinate_wise import CoordinateWise
from superlink.strategy.flower_strategies import WithExchangeSettings


class FedTrimmedAvg(WithExchangeSettings, CoordinateWise, flwr.FedTrimmedAvg):
    """Flower's FedTrimmedAvg (its ``beta``) on the checked updates."""

    def reduce(self, stacked: np.ndarray) -> np.ndarray:
        return trim_mean(stacked, self.beta)
