"""zk0 benchmarks: bytes on the wire, codec speed and aggregation speed, against references.

Run the default set (about a minute on 2 CPU cores, 7 GB peak RSS; docs/explanation/benchmarks.md)::

    HF_HUB_OFFLINE=1 python -m bench            # results in bench/results/results.{json,md}
    HF_HUB_OFFLINE=1 python -m bench --quick    # the tiny preset: seconds, for a smoke check

Each benchmark is a function ``run(ctx: BenchContext) -> list[Section]`` in its own module,
named in ``bench.__main__.BENCHMARKS``. They share one :class:`BenchContext`, so the
450M-parameter policy is built once per run, whichever benchmarks ask for it.

The machines these run on are shared and noisy: every speed is measured as best-of-N with its
reference (memcpy, numpy) interleaved in the same rounds, and reported as a ratio to it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_POLICY = "smolvla-random"  # the real SmolVLA architecture on SmolVLM2-500M, random
QUICK_POLICY = "smolvla-tiny"
# A site's local change per weight: AdamW moves a weight by about lr per step, and a round is
# ~50 steps at SmolVLA's lr 1e-4. Mostly normal float16 numbers, some subnormal, as for real.
UPDATE_SCALE = 1e-3

# A timed case: called untimed to prepare, it returns the callable that is timed.
Case = Callable[[], Callable[[], object]]


def interleaved(cases: Mapping[str, Case], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each case, the cases taking turns round after round.

    Taking turns (instead of N runs of one case, then N of the next) means a burst of load
    from a neighbour on a shared machine hits a reference and the measured path alike.
    """
    best = dict.fromkeys(cases, float("inf"))
    gc.collect()
    gc.freeze()  # the policy's and libraries' objects: the per-case collections skip them
    try:
        for _ in range(max(1, repeats)):
            for name, prepare in cases.items():
                fn = prepare()
                gc.collect()
                start = time.perf_counter()
                result = fn()
                best[name] = min(best[name], time.perf_counter() - start)
                del fn, result
    finally:
        gc.unfreeze()
    return best


def simple(fn: Callable[[], object]) -> Case:
    """A case that needs no preparation."""
    return lambda: fn


@dataclass
class BenchContext:
    """What every benchmark shares: the settings and the (expensive) policy, built once."""

    policy: str = DEFAULT_POLICY
    repeats: int = 3
    sites: int = 4
    seed: int = 0
    facts: dict[str, Any] = field(default_factory=dict)  # recorded in the JSON's config
    _bundle: Any = None
    _trainable: dict[str, np.ndarray] | None = None

    def run_config(self, **overrides: Any):
        """The run config a real federation with this policy would parse (pyproject defaults)."""
        from common.settings import RunConfig

        return RunConfig.with_overrides({"policy": self.policy, **overrides})

    @property
    def wire_dtype(self) -> str:
        """The wire dtype a run uses unless told otherwise."""
        return self.run_config().wire_dtype

    def bundle(self):
        """The policy bundle, built offline through zk0's own factory on first use."""
        if self._bundle is None:
            from common.norm_stats import Moments, global_stats
            from common.policy_factory import build_policy
            from demo_data import CAMERA_KEYS, DemoSpec, demo_features

            rng = np.random.default_rng(self.seed)
            moments = {
                k: Moments.of(rng.normal(0, 1, (64, 6))) for k in ("action", "observation.state")
            }
            start = time.perf_counter()
            self._bundle = build_policy(
                self.run_config(), demo_features(DemoSpec()), global_stats(moments, CAMERA_KEYS)
            )
            params = list(self._bundle.policy.parameters())
            self.facts |= {
                "policy_build_seconds": round(time.perf_counter() - start, 2),
                "parameters": sum(p.numel() for p in params),
                "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
            }
        return self._bundle

    def trainable(self) -> dict[str, np.ndarray]:
        """The server's global weights: float32 copies of the trainable parameters."""
        if self._trainable is None:
            from common.policy_factory import trainable_state

            state = trainable_state(self.bundle().policy)
            self._trainable = {k: v.numpy() for k, v in state.items()}
            self.facts["trainable_tensors"] = len(self._trainable)
        return self._trainable

    def site_state(self, site: int) -> dict[str, np.ndarray]:
        """Site ``site``'s trainable weights after local training: global + a seeded change.

        Speed and size do not depend on the values, but a realistic change keeps the float16
        update path honest (small numbers, no overflow, rounding that matters).
        """
        rng = np.random.default_rng([self.seed, site])
        scale = np.float32(UPDATE_SCALE)
        return {
            name: w + scale * rng.standard_normal(w.shape, dtype=np.float32)
            for name, w in self.trainable().items()
        }

    def release_policy(self) -> None:
        """Drop the policy (~2 GB at real size) once nothing left needs more than its weights."""
        self.trainable()
        self._bundle = None
        gc.collect()
