"""Unreadable samples at a site: skip them, count them, name them, and stop past a share.

A lab's recordings have glitches: a stretch of video that no longer decodes, a truncated or
missing file. One such frame must not cost the site its round (nor the federation a site), and
a raw ``av.error.InvalidDataError`` that names no file helps nobody. Nor may a dataset that is
broken in bulk train silently on what is left. So:

- every sample is read through :class:`GuardedDataset`: a sample that raises becomes a
  :class:`SampleProblem` naming the file, episode, frame and camera key (found by probing each
  camera of that frame) instead of an exception;
- :func:`collate_skipping` builds the batch from the readable samples and hands the problems
  along under :data:`SKIPPED` (so it works in DataLoader worker processes too);
- :class:`SkipTally` counts what was skipped, logs the first few, summarises the rest, and
  raises :class:`BadDataError` once more than ``max-bad-sample-share`` of the samples the round
  planned to read were bad: a clear error for that round instead of a loop over broken data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from common.logs import get_logger

#: Batch key under which :func:`collate_skipping` passes the problems of the samples it left out.
SKIPPED = "zk0.skipped"
_LOGGED_PER_TALLY = 5  # skipped samples logged one by one; the rest only in the summary
_ERROR_CHARS = 240

log = get_logger("zk0.supernode")


class BadDataError(RuntimeError):
    """More of a site's samples were unreadable than ``max-bad-sample-share`` allows."""


@dataclass(frozen=True)
class SampleProblem:
    """One sample that could not be read, and where it lives (None: could not be told)."""

    index: int  # position in the (episode-filtered) dataset
    episode: int | None
    frame: int | None
    key: str | None  # the camera whose video would not decode
    file: str | None  # relative to the dataset root
    error: str  # "InvalidDataError: ..."

    def where(self) -> str:
        parts = [f"episode {self.episode}" if self.episode is not None else f"sample {self.index}"]
        if self.frame is not None:
            parts.append(f"frame {self.frame}")
        if self.key:
            parts.append(f"key {self.key}")
        if self.file:
            parts.append(f"file {self.file}")
        return " ".join(parts)

    def describe(self) -> str:
        return f"{self.where()}: {self.error}"


def _error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


def _row(dataset: Any, idx: int) -> tuple[int, int, float]:
    """(episode, frame, timestamp) of sample ``idx`` from the Arrow table, without decoding."""
    table = dataset.hf_dataset.data
    return (
        int(table.column("episode_index")[idx].as_py()),
        int(table.column("frame_index")[idx].as_py()),
        float(table.column("timestamp")[idx].as_py()),
    )


def _failing_video(dataset: Any, episode: int, timestamp: float) -> tuple[str, str] | None:
    """The first camera whose video does not decode at this frame: (key, relative file)."""
    from lerobot.datasets.video_utils import decode_video_frames

    meta = dataset.meta
    for key in meta.video_keys:
        rel = meta.get_video_file_path(episode, key)
        try:
            start = float(meta.episodes[episode][f"videos/{key}/from_timestamp"])
            decode_video_frames(
                Path(dataset.root) / rel,
                [start + timestamp],
                getattr(dataset, "tolerance_s", 1e-4),
                getattr(dataset, "video_backend", "pyav"),
            )
        except Exception:  # the camera that fails on its own is the one to name
            return key, str(rel)
    return None


def _failing_image(dataset: Any, idx: int) -> str | None:
    """The first camera stored as images whose bytes at sample ``idx`` do not decode."""
    import io

    from PIL import Image

    table = dataset.hf_dataset.data
    for key in dataset.meta.image_keys:
        try:
            cell = table.column(key)[idx].as_py()
            with Image.open(io.BytesIO(cell["bytes"])) as img:
                img.load()
        except Exception:  # PIL and PyArrow raise many kinds
            return key
    return None


def locate(dataset: Any, idx: int, err: BaseException) -> SampleProblem:
    """Name the file, episode, frame and key of sample ``idx`` of a LeRobotDataset."""
    error = _error_text(err)
    try:
        episode, frame, timestamp = _row(dataset, idx)
    except Exception:  # the table itself is unreadable: say what we know
        return SampleProblem(idx, None, None, None, None, error)
    key, file = None, None
    with contextlib.suppress(Exception):
        found = _failing_video(dataset, episode, timestamp)
        if found:
            key, file = found
        else:  # images live in the data table
            key, file = _failing_image(dataset, idx), str(dataset.meta.get_data_file_path(episode))
    return SampleProblem(idx, episode, frame, key, file, error)


class GuardedDataset(Dataset):
    """A LeRobotDataset whose unreadable samples come out as :class:`SampleProblem`."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        try:
            return self.dataset[idx]
        except (MemoryError, RecursionError):
            raise
        except Exception as err:  # decoders and file readers raise many kinds
            return locate(self.dataset, int(idx), err)

    @property
    def meta(self) -> Any:
        return self.dataset.meta

    @property
    def hf_dataset(self) -> Any:
        """The frames' table (numeric columns are read from it, never through a decoder)."""
        return self.dataset.hf_dataset


def guarded(dataset: Any) -> GuardedDataset:
    return dataset if isinstance(dataset, GuardedDataset) else GuardedDataset(dataset)


def split_problems(items: Iterable[Any]) -> tuple[list[Any], list[SampleProblem]]:
    """(readable samples, problems) of a list of :class:`GuardedDataset` items."""
    good, bad = [], []
    for item in items:
        (bad if isinstance(item, SampleProblem) else good).append(item)
    return good, bad


def collate_skipping(items: Sequence[Any]) -> dict[str, Any]:
    """``default_collate`` of the readable samples; the problems under :data:`SKIPPED`."""
    good, bad = split_problems(items)
    batch: dict[str, Any] = default_collate(good) if good else {}
    batch[SKIPPED] = bad
    return batch


def batch_size_of(batch: dict[str, Any]) -> int:
    """Number of samples in a collated batch (0 for a batch of problems only)."""
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return 0


@dataclass(frozen=True)
class MissingEpisode:
    """An episode left out before reading: one of its files is missing."""

    episode: int
    frames: int
    file: str


@dataclass
class SkipTally:
    """What one train or eval step skipped, against what it planned to read.

    ``planned`` is the number of samples the step means to use (local steps x batch size, or
    the evaluation frames); the step fails once ``skipped > max_share * planned``.
    """

    what: str  # "training" | "evaluation"
    planned: int
    max_share: float
    root: str
    site: str = ""
    skipped: int = 0
    problems: list[SampleProblem] = field(default_factory=list)
    missing: list[MissingEpisode] = field(default_factory=list)
    missing_share: float = 0.0  # frames of missing episodes / frames of the split

    def add(self, problems: Sequence[SampleProblem]) -> None:
        """Count ``problems``; raise :class:`BadDataError` past the share."""
        for problem in problems:
            self.skipped += 1
            if len(self.problems) < 1000:  # enough to summarise; bounded memory
                self.problems.append(problem)
            if self.skipped <= _LOGGED_PER_TALLY:
                log.warning(
                    "sample_skipped", site=self.site, step=self.what, episode=problem.episode,
                    frame=problem.frame, key=problem.key, file=problem.file, error=problem.error,
                )
        if problems:
            self.check()

    def add_missing(self, missing: Sequence[MissingEpisode], split_frames: int) -> None:
        """Episodes left out because a file is missing; raise past the share of the split."""
        self.missing = list(missing)
        self.missing_share = sum(m.frames for m in missing) / max(split_frames, 1)
        for m in missing:
            log.warning("episode_skipped", site=self.site, step=self.what, episode=m.episode,
                        frames=m.frames, file=m.file, error="file missing")
        if self.missing_share > self.max_share:
            first = self.missing[0]
            raise BadDataError(
                f"{self.what} stopped: {len(missing)} episode(s) of {self.root} "
                f"({self.missing_share:.0%} of the frames) have a missing file, more than "
                f"max-bad-sample-share={self.max_share} allows; first: episode {first.episode} "
                f"file {first.file}. Run `zk0 check-dataset {self.root}` for every problem."
            )

    @property
    def share(self) -> float:
        return self.skipped / max(self.planned, 1)

    def check(self) -> None:
        if self.skipped > self.max_share * self.planned:
            raise BadDataError(
                f"{self.what} stopped: {self.skipped} of {self.planned} planned samples "
                f"({self.share:.0%}) could not be read, more than max-bad-sample-share="
                f"{self.max_share} allows; in {self.root}: {self.summary()}. Run `zk0 "
                f"check-dataset {self.root} --deep` to list every unreadable frame."
            )

    def summary(self, groups: int = 3) -> str:
        """A short account of what was skipped, grouped by file, episode, key and error."""
        parts = []
        if self.missing:
            eps = ", ".join(f"{m.episode} ({m.file})" for m in self.missing[:groups])
            parts.append(f"{len(self.missing)} episode(s) left out, file missing: {eps}")
        grouped: dict[tuple, list[SampleProblem]] = {}
        for p in self.problems:
            grouped.setdefault((p.file, p.episode, p.key, p.error.split(":")[0]), []).append(p)
        for (file, episode, key, _), items in list(grouped.items())[:groups]:
            frames = sorted({p.frame for p in items if p.frame is not None})
            span = _span(frames) if frames else "?"
            head = items[0]
            where = f"episode {episode} frames {span}" if episode is not None else "samples"
            where += f" key {key}" if key else ""
            where += f" file {file}" if file else ""
            parts.append(f"{len(items)} x {where}: {head.error}")
        if len(grouped) > groups:
            parts.append(f"and {len(grouped) - groups} more group(s)")
        return "; ".join(parts)


def _span(frames: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7' (at most four ranges)."""
    ranges: list[list[int]] = []
    for f in frames:
        if ranges and f == ranges[-1][1] + 1:
            ranges[-1][1] = f
        else:
            ranges.append([f, f])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:4])
    return text + (", ..." if len(ranges) > 4 else "")
