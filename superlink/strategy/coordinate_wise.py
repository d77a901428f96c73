"""Coordinate-wise robust aggregation over zk0's codec: the shared step of
:mod:`.fedtrimmedavg` and :mod:`.fedmedian`.

Flower's ``FedTrimmedAvg`` and ``FedMedian`` compute, parameter by parameter, a trimmed mean or
the median of the sites' float32 *weights* read from the replies. zk0's replies carry half-
precision *updates* whose checks (signature, reply model, digests, layout, finite values, norm
rule) run in :class:`CodecFedAvg`; and since every site starts from the same global model,
``median_i(global + d_i) = global + median_i(d_i)`` (likewise the trimmed mean). So these
strategies keep Flower's class for its parameters (``beta``) and summary, put
:class:`CodecFedAvg` before it in the MRO (its ``aggregate_train`` reads raw weights, which a
zk0 reply does not carry) and replace only the mean: one parameter at a time, every accepted
update decoded from its wire bytes and reduced with Flower's own function. Unweighted, as
Flower's are: no declared weight moves them; memory is one parameter times the sites.
"""

from __future__ import annotations

import numpy as np

from common import codec
from superlink.strategy.codec_fedavg import CodecFedAvg
from superlink.strategy.replies import AcceptedReply


class CoordinateWise(CodecFedAvg):
    """A :class:`CodecFedAvg` whose mean update is a coordinate-wise reduction."""

    def reduce(self, stacked: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """The sites' values of one parameter (sites first) reduced to one."""
        raise NotImplementedError

    def mean_update(self, accepted: list[AcceptedReply]) -> dict[str, np.ndarray]:
        out = {}
        for name in self._global:
            layers = [_decoded(reply, name) for reply in accepted]
            out[name] = np.asarray(self.reduce(np.stack(layers)), dtype=np.float32)
        return out


def _decoded(reply: AcceptedReply, name: str) -> np.ndarray:
    payload = reply.payload
    assert payload is not None
    wire_dtype = str(payload.meta["wire-dtype"])
    return codec.wire_tensor(payload.arrays[name], wire_dtype).float().numpy()

