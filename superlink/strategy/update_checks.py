"""Value checks of a site's update before it may reach aggregation, and how much it may weigh.

The digest proves the bytes are the ones the site sent, not that they are sane: a site whose
training diverged sends NaN/Inf with a valid digest, and one mean with a NaN in it poisons the
global model for every later round. A site with a wrong learning rate, a mislabelled dataset
or a bug sends a finite update far larger than everybody else's, which FedAvg's mean then
follows; a site that declares far more frames than it has buys itself most of every average.
So every update is scanned once, from its wire bytes (no float32 copy of the model):

- :func:`scan`: finite values (else the reply is dropped as ``nonfinite``) and the L2 norm;
- :func:`norm_outliers`: ``norm > ratio x reference``. With at least
  :data:`MIN_UPDATES_FOR_NORM_RULE` updates the reference is the round's median (a majority
  says what a normal update is); with one or two it is the median of the round's other update
  and of the norms accepted in the last :data:`HISTORY_ROUNDS` aggregated rounds, so the rule
  holds from the second update of the first round on. SCAFFOLD's control-variate deltas pass
  the same rule against their own history;
- :func:`capped_weights`: a site's weight (its ``num-examples``, bounded by the frames it
  declared at stage 0) is at most ``ratio`` x the median weight of the round's other accepted
  updates, so no declaration buys more than that share of an average.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from common import codec

MIN_UPDATES_FOR_NORM_RULE = 3
#: Aggregated rounds whose accepted norms stand in for a majority when a round has too few.
HISTORY_ROUNDS = 5


@dataclass(frozen=True)
class UpdateScan:
    norm: float  # L2 norm over every parameter of the update (float32 accumulation)
    nonfinite: str = ""  # why the update is not finite ("" = every value is finite)


def scan(payload: codec.Payload) -> UpdateScan:
    """Norm and finiteness of an update, one pass over its wire bytes."""
    wire_dtype = str(payload.meta["wire-dtype"])
    total = 0.0
    with torch.no_grad():
        for name, array in payload.arrays.items():
            x = codec.wire_tensor(array, wire_dtype)
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                bad = int(x.numel() - int(finite.sum()))
                return UpdateScan(
                    math.inf, f"parameter {name!r}: {bad} of {x.numel()} values are NaN or Inf"
                )
            total += float(torch.linalg.vector_norm(x, dtype=torch.float32)) ** 2
    if not math.isfinite(total):  # float16 values near the top of their range, squared
        return UpdateScan(math.inf, f"L2 norm overflows ({math.sqrt(total)})")
    return UpdateScan(math.sqrt(total))


def norm_outliers(
    norms: Mapping[str, float], ratio: float, history: Sequence[float] = (), what: str = "update"
) -> dict[str, str]:
    """Sites whose ``what`` norm exceeds ``ratio`` x its reference, with the reason.

    The reference is the median of ``norms`` with at least :data:`MIN_UPDATES_FOR_NORM_RULE`
    of them; with fewer, for each site the median of the other sites' norms and ``history``
    (norms accepted in earlier rounds). Empty when the rule is off (``ratio == 0``), or a site
    has no reference (the only update of the first round) or a reference of 0.
    """
    if ratio <= 0:
        return {}
    out = {}
    majority = len(norms) >= MIN_UPDATES_FOR_NORM_RULE
    for site, norm in norms.items():
        if majority:
            pool, source = list(norms.values()), f"the round's median (over {len(norms)} updates)"
        else:
            pool = [n for s, n in norms.items() if s != site] + list(history)
            source = (f"the median of {len(pool)} other update(s) (this round's and the last "
                      f"{HISTORY_ROUNDS} aggregated rounds')")
        if not pool:
            continue
        reference = statistics.median(pool)
        if reference > 0 and norm > ratio * reference:
            out[site] = (f"{what} norm {norm:.4g} exceeds max-update-norm-ratio={ratio:g} x "
                         f"{source} {reference:.4g}")
    return out


def remember(history: np.ndarray, server_round: int, norms: Sequence[float]) -> np.ndarray:
    """``history`` (rows of round, norm) with ``norms`` accepted in ``server_round`` added,
    keeping the last :data:`HISTORY_ROUNDS` rounds that have any."""
    rows = np.concatenate([history.reshape(-1, 2),
                           np.array([[server_round, n] for n in norms], np.float64).reshape(-1, 2)])
    kept = sorted(set(rows[:, 0].tolist()))[-HISTORY_ROUNDS:]
    return rows[np.isin(rows[:, 0], kept)]


def capped_weights(
    weights: Mapping[str, float], ratio: float
) -> tuple[dict[str, float], dict[str, str]]:
    """Each weight capped at ``ratio`` x the median of the others' (``ratio`` 0: as given),
    and why for each one capped. Against the *others'* median, so that with two sites one
    cannot raise the reference by its own declaration."""
    if ratio <= 0 or len(weights) < 2:
        return dict(weights), {}
    out, reasons = {}, {}
    for site, weight in weights.items():
        others = statistics.median(w for s, w in weights.items() if s != site)
        cap = ratio * others
        out[site] = min(weight, cap)
        if weight > cap:
            reasons[site] = (f"weight {weight:g} capped at {cap:g}: max-weight-ratio={ratio:g} x "
                             f"the median weight {others:g} of the round's other "
                             f"{len(weights) - 1} update(s)")
    return out, reasons
