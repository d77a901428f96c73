"""Value checks of a site's update before it may reach aggregation.

The digest proves the bytes are the ones the site sent, not that they are sane: a site whose
training diverged sends NaN/Inf with a valid digest, and one mean with a NaN in it poisons the
global model for every later round. A site with a wrong learning rate, a mislabelled dataset
or a bug sends a finite update far larger than everybody else's, which FedAvg's mean then
follows. So every update is scanned once, from its wire bytes (no float32 copy of the model):

- :func:`scan`: finite values (else the reply is dropped as ``nonfinite``) and the L2 norm;
- :func:`norm_outliers`: the robust rule ``norm > ratio x median(norms of this round)``,
  applied only with at least :data:`MIN_UPDATES_FOR_NORM_RULE` updates. With one or two there
  is no majority that says what a normal update is (the median of two is their mean, and a
  ratio above 2 could never fire), so the rule is skipped and logged; the finite check still
  applies. A median of 0 (every update empty) also skips it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from common import codec

MIN_UPDATES_FOR_NORM_RULE = 3


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
    return UpdateScan(math.sqrt(total))


def norm_outliers(norms: Mapping[str, float], ratio: float) -> dict[str, str]:
    """Sites whose update norm exceeds ``ratio`` x the median of ``norms``, with the reason.

    Empty when the rule is off (``ratio == 0``), when there are fewer than
    :data:`MIN_UPDATES_FOR_NORM_RULE` updates, or when the median is 0.
    """
    if ratio <= 0 or len(norms) < MIN_UPDATES_FOR_NORM_RULE:
        return {}
    median = statistics.median(norms.values())
    if median <= 0:
        return {}
    limit = ratio * median
    return {
        site: (
            f"update norm {norm:.4g} exceeds max-update-norm-ratio={ratio:g} x the round's "
            f"median {median:.4g} (over {len(norms)} updates)"
        )
        for site, norm in norms.items()
        if norm > limit
    }
