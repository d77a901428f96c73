"""Global checkpoints, one per round, in LeRobot's own layout.

``<run>/checkpoints/000003/pretrained_model/`` holds ``config.json``, ``model.safetensors`` and
the pre/post-processor files (with the federation's normalization stats), exactly what
``lerobot-train`` writes, so ``SmolVLAPolicy.from_pretrained`` and
``make_pre_post_processors(pretrained_path=...)`` load it, and ``lerobot-record``/
``lerobot-eval`` can deploy it on a robot. ``checkpoints/last`` points at the newest.

Next to ``pretrained_model/`` each checkpoint holds ``zk0_round.json`` (the round's report) and
``zk0_server_state.safetensors`` (:mod:`superlink.server_state`): what a resumed run continues
from. The folder is written whole or not at all (:func:`common.atomic.write_dir`); a write that
fails (disk full, quota, I/O error) leaves the previous checkpoints, ``last`` and the reports as
they were and raises :class:`CheckpointWriteError` naming the folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common import atomic
from common.policy_factory import LoadedPolicy, load_trainable, save_pretrained
from superlink import server_state

PRETRAINED_DIR = "pretrained_model"
ROUND_FILE = "zk0_round.json"


def checkpoint_dir(run_dir: Path, server_round: int) -> Path:
    return run_dir / "checkpoints" / f"{server_round:06d}"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous ones are intact."""


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    bundle: LoadedPolicy,
    weights: Mapping[str, np.ndarray],
    info: Mapping[str, Any],
    keep: int = 0,
    state: server_state.ServerState | None = None,
) -> Path:
    """Write the global policy after ``server_round`` atomically; prune to ``keep`` if > 0."""
    load_trainable(bundle.policy, weights)
    target = checkpoint_dir(run_dir, server_round)

    def fill(tmp: Path) -> None:
        save_pretrained(bundle, tmp / PRETRAINED_DIR)
        atomic.write_json(tmp / ROUND_FILE, dict(info))
        if state is not None:
            server_state.write(tmp / server_state.STATE_FILE, state)

    try:
        atomic.write_dir(target, fill)
        atomic.symlink(target.name, target.parent / "last")
    except Exception as err:  # OSError, or a writer's own (safetensors: SafetensorError)
        last = latest_checkpoint(run_dir)
        raise CheckpointWriteError(
            f"could not write the checkpoint of round {server_round} to {target} "
            f"({type(err).__name__}: {err}); the last complete checkpoint is "
            f"{last[1] if last else 'none'}, the run can be resumed from it with "
            f"resume-from once the output folder is writable again"
        ) from err
    if keep > 0:
        rounds = sorted(p for p in target.parent.iterdir() if p.name.isdigit())
        for old in rounds[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target / PRETRAINED_DIR


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """(round, folder) of the newest complete checkpoint (one with its server state)."""
    folder = run_dir / "checkpoints"
    rounds = sorted(
        (int(p.name), p) for p in folder.iterdir() if p.name.isdigit()
        and (p / server_state.STATE_FILE).is_file()
    ) if folder.is_dir() else []
    return rounds[-1] if rounds else None
