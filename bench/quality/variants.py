"""The study's variants (ways of training) and what every job of a study shares.

A variant is a federated run config (on top of the study's base config) or one of the two
non-federated baselines; :class:`Study` fixes everything else (data, rounds, steps, eval), so
that every variant gets the same total optimizer steps and is scored on the same frames.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

POLICY = "smolvla-tiny"
Engine = Literal["inprocess", "cluster"]
Kind = Literal["federated", "centralized", "local"]


@dataclass(frozen=True)
class Variant:
    """One way of training: a federated run config, or one of the two non-federated baselines.

    ``overrides`` are run-config keys (kebab-case, as ``flwr run -c``) on top of the study's
    base config; a federated variant may change ``num-server-rounds``/``local-steps`` as long
    as their product stays the same, so that every variant gets the same total steps.
    """

    name: str
    kind: Kind = "federated"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


DEFAULT_VARIANTS: tuple[Variant, ...] = (
    Variant("fedprox mu=1e-2", overrides={"strategy": "fedprox", "proximal-mu": 1e-2},
            description="FedProx, strong proximal term"),
    Variant("fedprox mu=1e-3", overrides={"strategy": "fedprox", "proximal-mu": 1e-3},
            description="FedProx, zk0's first default"),
    Variant("fedprox mu=1e-4", overrides={"strategy": "fedprox", "proximal-mu": 1e-4},
            description="FedProx, weak proximal term"),
    Variant("fedavg", overrides={"strategy": "fedavg", "proximal-mu": 0.0},
            description="FedAvg (mu = 0)"),
    Variant("fedavgm m=0.9 lr=1", overrides={"strategy": "fedavgm", "proximal-mu": 0.0,
                                             "server-momentum": 0.9, "server-lr": 1.0},
            description="FedAvg + server momentum 0.9, server lr 1"),
    Variant("fedavgm m=0 lr=2", overrides={"strategy": "fedavgm", "proximal-mu": 0.0,
                                           "server-momentum": 0.0, "server-lr": 2.0},
            description="FedAvg with a server step of 2x the mean update: zk0's default"),
    # Flower's FedAdam moves each weight by about eta per round (m / sqrt(v) ~ 1), so eta must
    # be of the order of one round's update (~1e-2 here), not zk0's server-lr default of 1.0.
    Variant("fedadam lr=1e-2", overrides={"strategy": "fedadam", "proximal-mu": 0.0,
                                          "server-lr": 1e-2},
            description="FedAvg + server Adam, eta 1e-2"),
    Variant("centralized", kind="centralized",
            description="one policy on the pooled training episodes, same total steps"),
    Variant("local", kind="local",
            description="each site alone on its own data, rounds x local-steps steps"),
)
VARIANTS: dict[str, Variant] = {v.name: v for v in DEFAULT_VARIANTS}


@dataclass(frozen=True)
class Study:
    """What every job of one study shares; part of each job's cache key."""

    out_dir: str
    data_dir: str
    rounds: int = 10
    local_steps: int = 20
    sites: int = 4
    batch_size: int = 8
    eval_samples: int = 64
    eval_every: int = 5
    eval_episodes: int = 2
    torch_threads: int = 1
    policy: str = POLICY

    def base_config(self, seed: int) -> dict[str, Any]:
        """Run-config overrides shared by every variant (eval settings identical for all)."""
        return {
            "policy": self.policy,
            "num-server-rounds": self.rounds,
            "local-steps": self.local_steps,
            "batch-size": self.batch_size,
            "eval-samples": self.eval_samples,
            "eval-every": self.eval_every,
            "min-sites": self.sites,
            "seed": seed,
            "keep-checkpoints": 1,
        }

    @property
    def total_steps(self) -> int:
        """Optimizer steps every variant gets, summed over sites."""
        return self.rounds * self.local_steps * self.sites



def parse_variant(text: str) -> Variant:
    """``NAME`` (a default variant) or ``NAME:key=value,key=value`` (a federated one)."""
    from common.settings import parse_overrides

    if ":" not in text:
        if text not in VARIANTS:
            raise argparse.ArgumentTypeError(f"unknown variant {text!r}; known: {list(VARIANTS)}")
        return VARIANTS[text]
    name, _, spec = text.partition(":")
    return Variant(name, overrides=parse_overrides(spec.split(",")), description="custom")


def node_configs(study: Study) -> list[dict[str, Any]]:
    """The sites' node configs, exactly as ``deploy.cluster.cli`` builds them for the cluster."""
    from deploy.cluster.cli import site_configs

    nodes = site_configs(Path(study.data_dir), study.sites, study.eval_episodes,
                         study.torch_threads)
    return [n.to_flwr() for n in nodes]


def run_config(study: Study, variant: Variant, seed: int, **extra: Any):
    """The full, validated RunConfig of a job (pyproject defaults + study + variant)."""
    from common.settings import RunConfig

    run = RunConfig.with_overrides({**study.base_config(seed), **variant.overrides, **extra})
    if run.total_steps * study.sites != study.total_steps:
        raise ValueError(
            f"variant {variant.name!r}: {run.num_server_rounds} rounds x {run.local_steps} steps "
            f"x {study.sites} sites != the study's {study.total_steps} total steps"
        )
    return run

