"""SCAFFOLD (Karimireddy et al. 2020): control variates that cancel the sites' drift.

Each site ``i`` keeps a control variate ``c_i`` (its own mean step direction) on its disk; the
server keeps ``c``, the mean of the sites' ``c_i``, and sends it with the global weights. A site
steps with the correction ``c - c_i`` (its direction replaced by the federation's), then sends
its update and ``c_i+ - c_i`` (option II; see :mod:`supernode.control_variates`). The server:

- moves the global model as FedAvgM does (``server-lr``, ``server-momentum``) on the checked
  weighted mean of the updates;
- adds ``(1 / N) * sum_{i in round} (c_i+ - c_i)`` to ``c``, with ``N`` the sites of the
  federation (stage 0), the paper's update: ``c`` stays the plain mean of all the ``c_i``.

The control delta travels through the same codec as the update (``wire-dtype``, digests) in the
``control``/``control-codec`` records and passes the update's checks (integrity, finite
values; not the norm rule). Bytes: ``c`` doubles the downlink and the delta the uplink; both
are in the round reports (``downlink_bytes``, ``uplink_bytes``, the sites' ``control_bytes``).

Keeping ``c`` and the ``c_i`` consistent when a reply is lost or refused: every train message
says which round's delta from that site the server last counted (``control-round``); the site
only adopts the ``c_i`` of that round (others stay pending and are dropped), and says which
round its delta starts from (``control_base_round``). A mismatch (a site that lost its state)
resets ``c`` and every count to zero: all sites start their control variates over, from the
deltas with base 0 of that same round.

State (resume; ``state_attributes``, saved with every checkpoint like FedAvgM's momentum):
``control`` (``c`` by parameter, float32) and ``control_rounds`` (per site).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr

import superlink.strategy.state as state
from common import codec
from common.logs import get_logger
from common.protocol import ARRAYS, CODEC, CONFIG, CONTROL, CONTROL_CODEC
from superlink.strategy.codec_fedavg import TRAIN, CodecFedAvg
from superlink.strategy.flower_strategies import WithExchangeSettings
from superlink.strategy.replies import AcceptedReply, ReplyRejected

log = get_logger("zk0.superlink")



class _ControlDelta:
    """A reply's control-variate delta where :meth:`CodecFedAvg.check_update` reads an update
    (``msg.content[ARRAYS]``/``[CODEC]``), so it passes exactly the same checks."""

    def __init__(self, msg: Message) -> None:
        content = msg.content
        if CONTROL not in content.array_records or CONTROL_CODEC not in content.config_records:
            raise ReplyRejected(
                "integrity",
                f"SCAFFOLD reply without its control-variate delta ('{CONTROL}' records)",
            )
        self.metadata = msg.metadata
        self.content = RecordDict({ARRAYS: content.array_records[CONTROL],
                                   CODEC: content.config_records[CONTROL_CODEC]})


class Scaffold(WithExchangeSettings, flwr.FedAvgM, CodecFedAvg):
    """FedAvgM's server step plus SCAFFOLD's control variates (see the module docstring)."""

    state_attributes = (*CodecFedAvg.state_attributes, "control", "control_rounds")

    def __init__(self, *args: Any, **params: Any) -> None:
        super().__init__(*args, **params)
        self.control: dict[str, np.ndarray] = {}  # c (float32); zeros from the first round
        self.control_rounds: dict[str, int] = {}  # site -> last round whose delta c counts
        self.control_downlink_bytes = 0  # c as encoded for the latest train message
        self.control_resets: list[int] = []  # rounds where c started over

    # -- configure ---------------------------------------------------------------------------

    def extend_messages(self, kind: str, server_round: int, messages: list[Message]) -> None:
        if kind != TRAIN or not messages:
            return
        if not self.control:
            self.control = {k: np.zeros_like(v) for k, v in self._global.items()}
        payload = codec.encode(self.control, self.settings.wire_dtype)
        self.control_downlink_bytes = payload.nbytes
        self.downlink_bytes += payload.nbytes
        for msg in messages:  # one RecordDict each: the config says which c_i the site uses
            site = self.settings.sites.get(msg.metadata.dst_node_id, "")
            own = ConfigRecord(dict(msg.content.config_records[CONFIG]))
            own["control-round"] = self.control_rounds.get(site, 0)
            msg.content = RecordDict({**dict(msg.content.items()), CONFIG: own,
                                      CONTROL: payload.arrays, CONTROL_CODEC: payload.meta})

    # -- checks ------------------------------------------------------------------------------

    def check_reply(
        self, kind: str, server_round: int, msg: Message, node: int, site: str
    ) -> AcceptedReply:
        accepted = super().check_reply(kind, server_round, msg, node, site)
        if kind != TRAIN:
            return accepted
        control = self.check_update(_ControlDelta(msg))  # type: ignore[arg-type]
        self.check_values(control)  # finite, as the update must be
        return replace(accepted, control=control)

    # -- aggregate ---------------------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.update_control(server_round, self.replies(TRAIN, server_round).accepted)
        return arrays, metrics

    def update_control(self, server_round: int, accepted: list[AcceptedReply]) -> None:
        """``c += (1/N) sum_i delta_i`` over the accepted replies; start over on a mismatch."""
        stale = sorted(r.site for r in accepted
                       if r.report.control_base_round != self.control_rounds.get(r.site, 0))
        if stale:
            log.warning("scaffold_control_reset", round=server_round, sites=stale,
                        reason="a site's control variate is not the one the server counted")
            self.control = {k: np.zeros_like(v) for k, v in self.control.items()}
            self.control_rounds = {}
            self.control_resets.append(server_round)
            accepted = [r for r in accepted if r.report.control_base_round == 0]
        share = 1.0 / max(len(self.settings.sites), 1)
        for reply in accepted:
            assert reply.control is not None
            codec.accumulate(self.control, reply.control, share)
            self.control_rounds[reply.site] = server_round

    def round_summary(self, server_round: int) -> dict[str, Any]:
        norm = float(np.sqrt(sum(float(np.dot(v.ravel(), v.ravel()))
                                 for v in self.control.values())))
        return {"control_norm": norm, "control_downlink_bytes_per_site":
                self.control_downlink_bytes, "control_reset": server_round in self.control_resets}

    # -- state -------------------------------------------------------------------------------

    def restore_state(self, arrays: Mapping[str, np.ndarray], layout: state.Layout) -> None:
        super().restore_state(arrays, layout)
        self.control = {k: np.asarray(v, np.float32) for k, v in self.control.items()}
        self.control_rounds = {s: int(np.asarray(r).item()) for s, r in self.control_rounds.items()}
