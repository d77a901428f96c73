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
``control``/``control-codec`` records and passes the update's checks: integrity, finite values
and the norm rule (against the round's other deltas and the deltas accepted in earlier rounds);
a reply whose delta fails is refused as a whole. ``c`` moves only with an accepted aggregate:
a round short of ``min-replies`` leaves ``c`` and every count as they were. Bytes: ``c``
doubles the downlink and the delta the uplink; both are in the round reports
(``downlink_bytes``, ``uplink_bytes``, the sites' ``control_bytes``).

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
from common.protocol import CONFIG, CONTROL, CONTROL_CODEC
from superlink.reply_model import SiteReply
from superlink.strategy.codec_fedavg import TRAIN, CodecFedAvg
from superlink.strategy.flower_strategies import WithExchangeSettings
from superlink.strategy.replies import AcceptedReply

log = get_logger("zk0.superlink")



class Scaffold(WithExchangeSettings, flwr.FedAvgM, CodecFedAvg):
    """FedAvgM's server step plus SCAFFOLD's control variates (see the module docstring)."""

    state_attributes = (*CodecFedAvg.state_attributes, "control", "control_rounds")
    control_delta = True  # every train update comes with its control-variate delta

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

    def accept(self, kind: str, reply: SiteReply, node: int, site: str) -> AcceptedReply:
        accepted = super().accept(kind, reply, node, site)
        delta = reply.control_delta  # the reply model has checked it is there with an update
        if delta is None:
            return accepted
        control = self.check_update(delta)  # the update's checks, exactly
        return replace(accepted, control=control, control_norm=self.check_values(control))

    # -- aggregate ---------------------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:  # c moves with an accepted aggregate only
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
        return {**super().round_summary(server_round), "control_norm": norm,
                "control_downlink_bytes_per_site": self.control_downlink_bytes,
                "control_reset": server_round in self.control_resets}

    # -- state -------------------------------------------------------------------------------

    def restore_state(self, arrays: Mapping[str, np.ndarray], layout: state.Layout) -> None:
        super().restore_state(arrays, layout)
        self.control = {k: np.asarray(v, np.float32) for k, v in self.control.items()}
        self.control_rounds = {s: int(np.asarray(r).item()) for s, r in self.control_rounds.items()}
