"""Global checkpoints, one per round, in LeRobot's own layout.

``<run>/checkpoints/000003/pretrained_model/`` holds ``config.json``, ``model.safetensors`` and
the pre/post-processor files (with the federation's normalization stats), exactly what
``lerobot-train`` writes, so ``SmolVLAPolicy.from_pretrained`` and
``make_pre_post_processors(pretrained_path=...)`` load it, and ``lerobot-record``/
``lerobot-eval`` can deploy it on a robot. ``checkpoints/last`` points at the newest.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common import atomic
from common.policy_factory import LoadedPolicy, load_trainable

PRETRAINED_DIR = "pretrained_model"


def checkpoint_dir(run_dir: Path, server_round: int) -> Path:
    return run_dir / "checkpoints" / f"{server_round:06d}"


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    bundle: LoadedPolicy,
    weights: Mapping[str, np.ndarray],
    info: Mapping[str, Any],
    keep: int = 0,
) -> Path:
    """Write the global policy after ``server_round`` atomically; prune to ``keep`` if > 0."""
    load_trainable(bundle.policy, weights)
    target = checkpoint_dir(run_dir, server_round)

    def fill(tmp: Path) -> None:
        pretrained = tmp / PRETRAINED_DIR
        bundle.policy.save_pretrained(pretrained)
        bundle.preprocessor.save_pretrained(pretrained)
        bundle.postprocessor.save_pretrained(pretrained)
        atomic.write_json(tmp / "zk0_round.json", dict(info))

    atomic.write_dir(target, fill)
    atomic.symlink(target.name, target.parent / "last")
    if keep > 0:
        rounds = sorted(p for p in target.parent.iterdir() if p.name.isdigit())
        for old in rounds[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target / PRETRAINED_DIR
