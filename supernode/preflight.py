"""Checks a lab runs before its SuperNode connects: is the dataset there, whole, and usable?

A SuperNode that joins with a broken dataset fails in every round, an hour apart, on the
coordinator's console. These checks run on the lab's box in seconds and refuse with a message
that names the path, key or value and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common import features as feat
from common.settings import NodeConfig
from supernode import site_dataset as ds

# SmolVLA pads state and action vectors to 32 dims (max_state_dim / max_action_dim).
MAX_STATE_DIM = 32
MAX_ACTION_DIM = 32


class SiteCheckError(ValueError):
    """The site's settings or dataset cannot take part in a federation."""


@dataclass(frozen=True)
class SiteSummary:
    site_name: str
    root: str
    episodes: int
    frames: int
    fps: int
    train_episodes: tuple[int, ...]
    eval_episodes: tuple[int, ...]
    features: dict[str, Any]
    cameras: list[str]

    def describe(self) -> str:
        state = self.features["observation.state"]["shape"]
        action = self.features["action"]["shape"]
        return (
            f"site {self.site_name}: {self.episodes} episodes, {self.frames} frames at "
            f"{self.fps} fps in {self.root}; state {state}, action {action}, cameras "
            f"{', '.join(self.cameras)}; train on {len(self.train_episodes)} episodes, hold "
            f"out {list(self.eval_episodes)}"
        )


def _check_features(spec: dict[str, Any]) -> list[str]:
    problems = []
    for key, limit in (("observation.state", MAX_STATE_DIM), ("action", MAX_ACTION_DIM)):
        if key not in spec:
            problems.append(f"feature {key!r} is missing")
            continue
        shape = spec[key]["shape"]
        if len(shape) != 1 or not 1 <= shape[0] <= limit:
            problems.append(f"feature {key!r} has shape {shape}, expected (n,) with n <= {limit}")
    cameras = feat.camera_keys(spec)
    if not cameras:
        problems.append("no camera feature (dtype image or video): a VLA policy needs one")
    for cam in cameras:
        shape = spec[cam]["shape"]
        if len(shape) != 3 or 3 not in (shape[0], shape[-1]):
            problems.append(f"camera {cam!r} has shape {shape}, expected (H, W, 3)")
    return problems


def check_site(node: NodeConfig) -> SiteSummary:
    """Open the site's dataset, split it, check its features and read a frame of each split."""
    try:
        meta = ds.open_metadata(node)
        split = ds.split_episodes(meta.total_episodes, node.eval_episodes, node.split_seed)
    except ds.DatasetError as err:
        raise SiteCheckError(f"site {node.site_name!r}: {err}") from None
    spec = feat.feature_spec(meta.features)
    problems = _check_features(spec)
    if problems:
        raise SiteCheckError(
            f"site {node.site_name!r}: dataset {ds.dataset_root(node) or node.repo_id} does not "
            "fit a SmolVLA policy: " + "; ".join(problems)
        )
    for episodes in (split.train[:1], split.eval[:1]):
        try:
            dataset = ds.open_dataset(node, episodes)
            dataset[0]  # decodes the frame's images: catches missing or unreadable files
        except Exception as err:  # parquet, video and image errors come in many types
            raise SiteCheckError(
                f"site {node.site_name!r}: cannot read episode {episodes[0]} of "
                f"{ds.dataset_root(node) or node.repo_id}: {err}"
            ) from err
    return SiteSummary(
        site_name=node.site_name,
        root=str(ds.dataset_root(node) or node.repo_id),
        episodes=meta.total_episodes,
        frames=meta.total_frames,
        fps=int(meta.fps),
        train_episodes=split.train,
        eval_episodes=split.eval,
        features=spec,
        cameras=feat.camera_keys(spec),
    )
