"""The aggregation strategy: Flower's strategies over zk0's codec and reply checks.

- :mod:`.codec_fedavg`: ``CodecFedAvg``, FedAvg's steps over the wire codec (encode the global,
  check every reply, weighted mean of the updates from the wire bytes);
- :mod:`.flower_strategies`: Flower's FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad,
  each with ``CodecFedAvg`` behind it;
- drift correction, a module each: :mod:`.scaffold` (control variates), :mod:`.fedexp`
  (extrapolated server step), :mod:`.fedprox_decoupled` (proximal pull outside AdamW);
- :mod:`.diloco`: DiLoCo's outer optimizer, Nesterov momentum on the sites' mean update;
- robust aggregation, a module each: :mod:`.fedtrimmedavg` and :mod:`.fedmedian` (Flower's,
  coordinate-wise over the codec, :mod:`.coordinate_wise`), :mod:`.fedavg_clipped` (norm
  clipping);
- :mod:`.node_selection`: which sites take part in a round (seeded);
- :mod:`.replies`: accepted replies and failures of one exchange;
- :mod:`.update_checks`: finite values, the norm rule and the weight cap for every update;
- :mod:`.state`: a strategy's server state (momentum, moments) as arrays, for resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord

from common.settings import RunConfig
from superlink.strategy.codec_fedavg import EVALUATE, TRAIN, CodecFedAvg, ExchangeSettings
from superlink.strategy.diloco import DiLoCo
from superlink.strategy.fedavg_clipped import FedAvgClipped
from superlink.strategy.fedexp import FedExP
from superlink.strategy.fedmedian import FedMedian
from superlink.strategy.fedprox_decoupled import FedProxDecoupled
from superlink.strategy.fedtrimmedavg import FedTrimmedAvg
from superlink.strategy.flower_strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
)
from superlink.strategy.replies import FAILURE_KINDS, AcceptedReply, Failure, RoundReplies
from superlink.strategy.scaffold import Scaffold

if TYPE_CHECKING:
    from superlink.authenticity import FederationGuard

__all__ = [
    "EVALUATE",
    "FAILURE_KINDS",
    "TRAIN",
    "AcceptedReply",
    "CodecFedAvg",
    "ExchangeSettings",
    "Failure",
    "RoundReplies",
    "make_strategy",
]


def make_strategy(
    run: RunConfig,
    norm_stats: ArrayRecord,
    sites: Mapping[int, str],
    action_dims: int = 0,
    *,
    guard: FederationGuard | None = None,
) -> CodecFedAvg:
    """The strategy named by ``run.strategy`` for the sites that joined (node id -> name);
    ``action_dims`` (the federation's action size) bounds the trajectories sites may send;
    ``guard`` signs its instructions and checks every reply (:mod:`superlink.authenticity`)."""
    settings = ExchangeSettings(
        wire_dtype=run.wire_dtype,
        norm_stats=norm_stats,
        sites=dict(sites),
        fraction_train=run.fraction_train,
        min_sites=run.min_sites,
        wait_timeout=run.join_timeout or None,
        seed=run.seed,
        trajectory_frames=run.trajectory_frames,
        action_dims=action_dims,
        min_replies=run.min_replies,
        max_update_norm_ratio=run.max_update_norm_ratio,
        max_weight_ratio=run.max_weight_ratio,
        report_limits={"steps": run.local_steps, "samples": run.local_steps * run.batch_size,
                       "eval_samples": run.eval_samples},
        round_timeout=run.round_timeout or None,
        guard=guard,
    )
    match run.strategy:
        case "fedavg":
            return FedAvg(settings)
        case "fedprox":
            return FedProx(settings, proximal_mu=run.proximal_mu)
        case "fedavgm" | "scaffold":  # SCAFFOLD moves the global model as FedAvgM does
            cls = FedAvgM if run.strategy == "fedavgm" else Scaffold
            return cls(
                settings, server_learning_rate=run.server_lr, server_momentum=run.server_momentum
            )
        case "fedadam":
            return FedAdam(settings, eta=run.server_lr, tau=run.server_tau)
        case "fedyogi":
            return FedYogi(settings, eta=run.server_lr, tau=run.server_tau)
        case "fedadagrad":
            return FedAdagrad(settings, eta=run.server_lr, tau=run.server_tau)
        case "diloco":
            return DiLoCo(settings, server_learning_rate=run.server_lr,
                          server_momentum=run.server_momentum)
        case "fedprox-decoupled":
            return FedProxDecoupled(settings, proximal_mu=run.proximal_mu)
        case "fedexp":
            return FedExP(settings, epsilon=run.fedexp_epsilon)
        case "fedtrimmedavg":
            return FedTrimmedAvg(settings, beta=run.trim_beta)
        case "fedmedian":
            return FedMedian(settings)
        case "fedavg-clipped":
            return FedAvgClipped(settings, clip_ratio=run.clip_norm_ratio)
    raise ValueError(f"unknown strategy {run.strategy!r}")  # RunConfig allows no other
