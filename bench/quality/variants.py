"""The study's variants (ways of training), its scenarios, and what every job of a study shares.

The question a lab asks is "at the same number of steps on my box, do I end up with a better
policy in the federation than alone?", so the study's budget is ``steps_per_site``: every site
(or a site alone, or the pooled trainer) gets that many sequential optimizer steps.

References (:mod:`bench.quality.baselines`), side by side with the federated variants:

- ``alone``: each site on its own data for ``steps_per_site`` steps (batch ``batch_size``): what
  a lab gets without joining;
- ``pooled, same clock``: one trainer on the pooled data for ``steps_per_site`` steps with the
  sites' summed batch (``sites x batch_size``): the same samples and sequential updates as a
  federated run, without client drift; a federated run's ratio to it is its drift;
- ``pooled, all the time``: one trainer on the pooled data for ``sites x steps_per_site`` steps
  of ``batch_size`` (the study's former "centralized"): 4x the sequential updates, information.

A federated variant is a run config on top of pyproject's defaults (and the study's policy,
batch and evaluation); the study sets ``num-server-rounds`` so that ``rounds x local-steps +
personalize-steps = steps_per_site``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

POLICY = "smolvla-tiny"
Engine = Literal["inprocess", "cluster"]
Kind = Literal["federated", "alone", "pooled-same-clock", "pooled-all"]
REFERENCE_KINDS: tuple[Kind, ...] = ("alone", "pooled-same-clock", "pooled-all")


@dataclass(frozen=True)
class Variant:
    """One way of training: a federated run config, or one of the references.

    ``overrides`` are run-config keys (kebab-case, as ``flwr run -c``) on top of pyproject's
    defaults; ``num-server-rounds`` is the study's to set (from its budget).
    """

    name: str
    kind: Kind = "federated"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


REFERENCES: tuple[Variant, ...] = (
    Variant("alone", kind="alone",
            description="each site alone on its own data, the same steps per site"),
    Variant("pooled, same clock", kind="pooled-same-clock",
            description="one trainer on the pooled data, the same steps with the sites' summed "
                        "batch: the drift-free reference of a federated run"),
    Variant("pooled, all the time", kind="pooled-all",
            description="one trainer on the pooled data, sites x the steps at the sites' batch "
                        "(the former 'centralized'; information)"),
)
#: FedAvgM with a server step of 2, no momentum: the default until this study.
FEDAVGM_STEP_2 = {"strategy": "fedavgm", "server-lr": 2.0, "server-momentum": 0.0}
#: DiLoCo's published outer optimizer, pyproject's default since this study.
DILOCO = {"strategy": "diloco", "server-lr": 0.7, "server-momentum": 0.9}
# Every federated variant names its strategy and server step: a change of pyproject's defaults
# must not silently change what a cached job (its key holds the overrides) stands for.
FEDERATED: tuple[Variant, ...] = (
    Variant("fedavgm lr=2 (previous default)", overrides=FEDAVGM_STEP_2,
            description="FedAvgM without momentum, server step 2, 25 local steps: zk0's default "
            "before this study"),
    Variant("diloco lr=0.7 m=0.9 (default)", overrides=DILOCO,
            description="DiLoCo's published outer optimizer (Nesterov momentum 0.9, outer lr "
            "0.7) on the default schedule: pyproject's defaults"),
    Variant("fedavgm lr=2 + personalize 200",
            overrides={**FEDAVGM_STEP_2, "personalize-steps": 200},
            description="FedAvgM step 2, then 200 of the site's steps fine-tuning the final "
            "global model on its own data"),
)
DEFAULT_VARIANTS: tuple[Variant, ...] = (*REFERENCES, *FEDERATED)
VARIANTS: dict[str, Variant] = {v.name: v for v in DEFAULT_VARIANTS}


@dataclass(frozen=True)
class ScenarioPreset:
    """A data scenario of the study: how the demo sites are made, and its budget."""

    demo: Mapping[str, Any]  # DemoSpec fields
    steps_per_site: int


SCENARIO_PRESETS: dict[str, ScenarioPreset] = {
    # Four unrelated tasks, 6 episodes per site (2 held out): a specialist's best case.
    "four-tasks": ScenarioPreset({"scenario": "four-tasks", "episodes_per_site": 6}, 1200),
    # One task under each site's own conditions, few episodes per site: a federation's case.
    "shared-tasks": ScenarioPreset({"scenario": "shared-tasks", "episodes_per_site": 6}, 1200),
}


@dataclass(frozen=True)
class Study:
    """What every job of one study of one scenario shares; part of each job's cache key."""

    out_dir: str
    data_dir: str
    scenario: str = "four-tasks"
    demo_spec: str = "{}"  # DemoSpec fields as JSON (a frozen dataclass must stay hashable)
    steps_per_site: int = 1200
    sites: int = 4
    batch_size: int = 8
    eval_samples: int = 64
    eval_every_steps: int = 150  # steps per site between two evaluated models (curve points)
    eval_episodes: int = 2
    torch_threads: int = 1
    policy: str = POLICY

    def rounds(self, local_steps: int, personalize_steps: int = 0) -> int:
        """Federated rounds that spend the budget, with ``personalize_steps`` kept for the end."""
        train = self.steps_per_site - personalize_steps
        if train <= 0 or train % local_steps:
            raise ValueError(
                f"{self.steps_per_site} steps per site minus {personalize_steps} personalization "
                f"steps is not a whole number of rounds of {local_steps} local steps"
            )
        return train // local_steps

    def base_config(self, seed: int, local_steps: int, personalize_steps: int = 0
                    ) -> dict[str, Any]:
        """Run-config overrides shared by every variant (eval settings identical for all)."""
        if self.eval_every_steps % local_steps:
            raise ValueError(f"eval every {self.eval_every_steps} steps is not a whole number "
                             f"of rounds of {local_steps} local steps")
        return {
            "policy": self.policy,
            "num-server-rounds": self.rounds(local_steps, personalize_steps),
            "batch-size": self.batch_size,
            "eval-samples": self.eval_samples,
            "eval-every": self.eval_every_steps // local_steps,
            "min-sites": self.sites,
            "seed": seed,
            "keep-checkpoints": 1,
            "trajectory-every": 0,  # plots are for people; the study reads numbers
        }

    def demo(self) -> dict[str, Any]:
        return json.loads(self.demo_spec)


def parse_variant(text: str) -> Variant:
    """``NAME`` (a default variant) or ``NAME:key=value,key=value`` (a federated one)."""
    from common.settings import parse_overrides

    if ":" not in text:
        if text not in VARIANTS:
            raise argparse.ArgumentTypeError(f"unknown variant {text!r}; known: {list(VARIANTS)}")
        return VARIANTS[text]
    name, _, spec = text.partition(":")
    overrides = parse_overrides(spec.split(","))
    if "num-server-rounds" in overrides:
        raise argparse.ArgumentTypeError(
            f"variant {name!r}: num-server-rounds follows from the study's steps per site; set "
            "local-steps (and personalize-steps) instead")
    return Variant(name, overrides=overrides, description="custom")


def node_configs(study: Study) -> list[dict[str, Any]]:
    """The sites' node configs, exactly as ``zk0 cluster`` builds them for the cluster."""
    from deploy.cluster.cli import site_configs

    nodes = site_configs(Path(study.data_dir), study.sites, study.eval_episodes,
                         study.torch_threads)
    return [n.to_flwr() for n in nodes]


def run_config(study: Study, variant: Variant, seed: int, **extra: Any):
    """The full, validated RunConfig of a job (pyproject defaults + study + variant)."""
    from common.settings import RunConfig

    defaults = RunConfig.defaults_from_pyproject()
    local = int(variant.overrides.get("local-steps", defaults["local-steps"]))
    personalize = int(variant.overrides.get("personalize-steps", 0))
    return RunConfig.with_overrides(
        {**study.base_config(seed, local, personalize), **variant.overrides, **extra})


def reference_config(study: Study, seed: int, steps: int, chunk: int, batch_size: int):
    """The RunConfig a reference trainer uses: the federation's optimizer, lr and schedule over
    ``steps`` steps of ``batch_size``, run as ``steps / chunk`` "rounds" of ``chunk`` steps (one
    evaluated model after each)."""
    from common.settings import RunConfig

    return RunConfig.with_overrides({
        **study.base_config(seed, study.eval_every_steps),
        "num-server-rounds": steps // chunk, "local-steps": chunk, "batch-size": batch_size,
    })


def describe(variant: Variant) -> dict[str, Any]:
    return asdict(variant) | {"overrides": dict(variant.overrides)}
