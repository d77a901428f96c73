"""A site's own LeRobotDataset: where it is, how it splits into train and held-out episodes,
and how it is opened for training, evaluation and statistics. It never leaves the site.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.settings import NodeConfig


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
    return read_metadata(dataset_root(node), node.repo_id)


def read_metadata(root: Path | None, repo_id: str):
    """:func:`open_metadata` for a root folder (None: the Hub repo ``repo_id``)."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

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
        return LeRobotDatasetMetadata(repo_id, root=root)
    except Exception as err:  # lerobot raises many kinds; the operator needs the path
        where = str(root) if root else f"Hub repo {repo_id!r}"
        raise DatasetError(f"cannot read LeRobotDataset at {where}: {err}") from err


def missing_files(meta, root: Path | None, episodes: Sequence[int]) -> dict[int, str]:
    """Episodes of a local dataset whose data or video file is missing -> that file (relative).

    LeRobot treats a missing file as "not downloaded yet" and goes to the Hub for it: offline
    that is an ``OfflineModeIsEnabled`` error that names neither the file nor the episode.
    """
    if root is None:
        return {}
    missing: dict[int, str] = {}
    for ep in episodes:
        files = [meta.get_data_file_path(ep)]
        files += [meta.get_video_file_path(ep, key) for key in meta.video_keys]
        for rel in files:
            if not (root / rel).is_file():
                missing[int(ep)] = str(rel)
                break
    return missing


def unreadable_data_file(root: Path) -> tuple[Path, str] | None:
    """The first parquet file under ``root/data`` that pyarrow cannot read, and why."""
    import pyarrow.parquet as pq

    for path in sorted((root / "data").glob("*/*.parquet")):
        try:
            pq.read_table(path)
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
            return path, f"{type(err).__name__}: {err}"
    return None


def open_dataset(node: NodeConfig, episodes: Sequence[int], delta_timestamps=None, meta=None):
    """A LeRobotDataset over ``episodes`` of the site's data (video decoded with PyAV).

    A missing file or an unreadable data table is a :class:`DatasetError` naming the file:
    LeRobot itself would ask the Hub for the first and say only "An error occurred while
    generating the dataset" for the second (its table is read whole, for every episode).
    """
    from datasets.utils.logging import disable_progress_bar
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = dataset_root(node)
    if root is not None:
        gone = missing_files(meta or open_metadata(node), root, episodes)
        if gone:
            ep, rel = next(iter(gone.items()))
            raise DatasetError(
                f"{root}: {rel} is missing (episode {ep}"
                + (f" and {len(gone) - 1} more episode(s))" if len(gone) > 1 else ")")
            )
    disable_progress_bar()  # one bar per parquet load would flood a site's logs every round
    try:
        return LeRobotDataset(
            node.repo_id,
            root=root,
            episodes=list(episodes),
            delta_timestamps=delta_timestamps,
            video_backend=node.video_backend,
        )
    except Exception as err:
        broken = unreadable_data_file(root) if root is not None else None
        if broken is not None:
            path, why = broken
            raise DatasetError(
                f"{root}: data file {path.relative_to(root)} is unreadable ({why}); every "
                "episode's frames are indexed through it, so none can be read"
            ) from err
        raise


def numeric_columns(dataset, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-frame values of numeric features of the dataset's selected episodes, (frames, dims)."""
    table = dataset.hf_dataset.data
    out = {}
    for key in keys:
        column = table.column(key).combine_chunks()
        values = np.asarray(column.flatten() if hasattr(column, "flatten") else column)
        out[key] = values.reshape(len(column), -1).astype(np.float64)
    return out
