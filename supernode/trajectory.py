"""The site's per-joint trajectory: the policy run over one fixed held-out episode.

The action MSE says *how much* a model is off; a lab member wants to see *where*: which joint,
which phase of the motion (reach, grasp, lift). So the site replays the first
``trajectory-frames`` frames of one held-out episode the way LeRobot runs a chunking policy on a
robot: at frame 0 the policy predicts a chunk from the recorded observation and its first
``n_action_steps`` actions are executed open-loop; then it predicts again, and so on. Each
predicted action is compared with the action recorded at that frame, in real units.

The episode is fixed by the run seed among the site's held-out episodes and so is the
flow-matching noise, so round 3's plot and round 7's differ only because the model did. It
costs ``frames / n_action_steps`` forward passes (the action MSE costs ``eval-samples``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common.plotting import render_trajectory
from common.policy_factory import LoadedPolicy
from common.trajectory import Trajectory, joint_names, joint_unit
from supernode.evaluation import ChunkPredictor, collate
from supernode.site_dataset import numeric_columns


def plotted_episode(held_out: Sequence[int], seed: int) -> int:
    """The held-out episode every round's plot shows: chosen by the run seed."""
    episodes = sorted(int(e) for e in held_out)
    if not episodes:
        raise ValueError("no held-out episode to plot")
    return episodes[int(np.random.default_rng([seed, 0x7A7]).integers(len(episodes)))]


def episode_rows(dataset, episode: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (in the dataset's selection) and frame numbers of the episode's first
    ``frames`` frames, in frame order."""
    cols = numeric_columns(dataset, ["episode_index", "frame_index"])
    rows = np.flatnonzero(cols["episode_index"][:, 0] == episode)
    if len(rows) == 0:
        raise ValueError(f"episode {episode} is not in this dataset selection")
    frame_index = cols["frame_index"][rows, 0].astype(np.int64)
    order = np.argsort(frame_index, kind="stable")[:frames]
    return rows[order], frame_index[order]


@torch.no_grad()
def predict_trajectory(
    bundle: LoadedPolicy,
    dataset,
    episode: int,
    frames: int,
    batch_size: int,
    seed: int,
) -> Trajectory:
    """Predicted against recorded actions over ``episode``'s first ``frames`` frames."""
    rows, frame_index = episode_rows(dataset, episode, frames)
    recorded = numeric_columns(dataset, ["action"])["action"][rows].astype(np.float32)
    cfg = bundle.config
    steps = max(1, min(int(getattr(cfg, "n_action_steps", 1) or 1), int(cfg.chunk_size)))
    starts = list(range(0, len(rows), steps))
    predict = ChunkPredictor(bundle, seed)
    predicted = np.zeros_like(recorded)
    for lo in range(0, len(starts), batch_size):
        group = starts[lo : lo + batch_size]
        chunk = predict(collate([dataset[int(rows[s])] for s in group]), offset=lo).numpy()
        for b, s in enumerate(group):
            k = min(steps, len(rows) - s)
            predicted[s : s + k] = chunk[b, :k]
    names = joint_names(dataset.meta.features["action"].get("names"), recorded.shape[1])
    return Trajectory(
        episode=int(episode),
        fps=float(dataset.meta.fps),
        names=names,
        units=tuple(joint_unit(n) for n in names),
        frame_index=frame_index,
        recorded=recorded,
        predicted=predicted,
        chunk_starts=frame_index[starts],
    )


def keep_at_site(traj: Trajectory, folder: Path, site: str, after_round: int) -> Path:
    """Plot a trajectory the site does not share: ``<folder>/plots/round_NNN.png``."""
    return render_trajectory(
        traj,
        folder / "plots" / f"round_{after_round:03d}.png",
        f"{site}: global model after round {after_round}, held-out episode {traj.episode} "
        f"(kept at the site)",
        mode=0o600,
    )
