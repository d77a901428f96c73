"""Dataset helpers: a site's LeRobotDataset, its train/eval split and the features it offers.

Each site's data stays where it is; what leaves the site is a description of its features
(names, dtypes, shapes) so the SuperLink can build the same policy, and count-level statistics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.settings import NodeConfig

# Bookkeeping columns every LeRobotDataset has; they are never policy inputs.
_BOOKKEEPING = {"timestamp", "frame_index", "episode_index", "index", "task_index"}


class DatasetError(ValueError):
    """The site's dataset is missing, unreadable, or does not fit the policy."""


@dataclass(frozen=True)
class Split:
    """Which episodes a site trains on and which it holds out for evaluation."""

    train: tuple[int, ...]
    eval: tuple[int, ...]


def split_episodes(total: int, eval_episodes: int, seed: int) -> Split:
    """Hold out ``eval_episodes`` episodes chosen by a seeded permutation (same seed, same split).

    Whole episodes are held out, never frames, so evaluation never sees a frame whose neighbours
    were trained on.
    """
    if total < eval_episodes + 1:
        raise DatasetError(
            f"dataset has {total} episode(s); need at least {eval_episodes + 1} "
            f"(eval-episodes={eval_episodes} held out + 1 to train on)"
        )
    order = np.random.default_rng(seed).permutation(total)
    return Split(
        train=tuple(sorted(int(i) for i in order[eval_episodes:])),
        eval=tuple(sorted(int(i) for i in order[:eval_episodes])),
    )


def dataset_root(node: NodeConfig) -> Path | None:
    return Path(node.dataset_root).expanduser() if node.dataset_root else None


def open_metadata(node: NodeConfig):
    """The dataset's metadata, or a :class:`DatasetError` naming the path and what was expected.

    A local root must already hold a LeRobotDataset: LeRobot would otherwise try to fetch a
    missing root from the Hub, which is the wrong thing to do with a lab's private data.
    """
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    root = dataset_root(node)
    if root is not None:
        info = root / "meta" / "info.json"
        if not root.is_dir():
            raise DatasetError(f"dataset-root {str(root)!r} does not exist or is not a folder")
        if not info.is_file():
            raise DatasetError(
                f"dataset-root {str(root)!r} is not a LeRobotDataset: {info} is missing"
            )
        try:
            version = json.loads(info.read_text()).get("codebase_version", "")
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(f"{info}: unreadable ({err})") from None
        if not str(version).startswith("v3"):
            raise DatasetError(
                f"{info}: codebase_version {version!r}, expected a v3.x LeRobotDataset "
                "(convert older datasets with lerobot's v30 conversion script)"
            )
    try:
        return LeRobotDatasetMetadata(node.repo_id, root=root)
    except Exception as err:  # lerobot raises many kinds; the operator needs the path
        where = str(root) if root else f"Hub repo {node.repo_id!r}"
        raise DatasetError(f"cannot read LeRobotDataset at {where}: {err}") from err


def feature_spec(features: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The policy-relevant features (observations, actions) as JSON-able dicts."""
    spec = {}
    for key, ft in features.items():
        if key in _BOOKKEEPING or not (key.startswith("observation.") or key == "action"):
            continue
        spec[key] = {
            "dtype": str(ft["dtype"]),
            "shape": [int(s) for s in ft["shape"]],
            "names": ft.get("names"),
        }
    return spec


def camera_keys(spec: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(k for k, f in spec.items() if f["dtype"] in ("image", "video"))


def numeric_keys(spec: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(k for k, f in spec.items() if f["dtype"] not in ("image", "video", "string"))


def compare_specs(site: str, local: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse a dataset whose features differ from the federation's (names, dtypes, shapes).

    Camera resolutions may differ between labs (SmolVLA resizes every image); the set of
    cameras, and the state/action dimensions, may not.
    """
    problems = []
    for key in sorted(set(expected) - set(local)):
        problems.append(f"missing feature {key!r} (expected {expected[key]['shape']})")
    for key in sorted(set(local) - set(expected)):
        problems.append(f"extra feature {key!r} not in the federation's policy")
    for key in sorted(set(local) & set(expected)):
        a, b = local[key], expected[key]
        is_cam = a["dtype"] in ("image", "video") and b["dtype"] in ("image", "video")
        if not is_cam and (a["dtype"] != b["dtype"] or list(a["shape"]) != list(b["shape"])):
            problems.append(
                f"feature {key!r}: {a['dtype']}{a['shape']} but the federation expects "
                f"{b['dtype']}{b['shape']}"
            )
    if problems:
        raise DatasetError(f"site {site!r}: dataset features do not match: " + "; ".join(problems))


def open_dataset(node: NodeConfig, episodes: Sequence[int], delta_timestamps=None):
    """A LeRobotDataset over ``episodes`` of the site's data (video decoded with PyAV)."""
    from datasets.utils.logging import disable_progress_bar
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    disable_progress_bar()  # one bar per parquet load would flood a site's logs every round
    return LeRobotDataset(
        node.repo_id,
        root=dataset_root(node),
        episodes=list(episodes),
        delta_timestamps=delta_timestamps,
        video_backend=node.video_backend,
    )


def numeric_columns(dataset, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-frame values of numeric features of the dataset's selected episodes, (frames, dims)."""
    table = dataset.hf_dataset.data
    out = {}
    for key in keys:
        column = table.column(key).combine_chunks()
        values = np.asarray(column.flatten() if hasattr(column, "flatten") else column)
        out[key] = values.reshape(len(column), -1).astype(np.float64)
    return out
