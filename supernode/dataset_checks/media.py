"""The camera data of a LeRobotDataset: video files there and decodable, images readable.

Standard mode reads every video container through (packets only: cheap) to see that each
episode's frames are there, and decodes the first, middle and last frame of every episode and
camera through LeRobot's own decoder (what training calls). ``deep`` decodes every frame of
every video once, in file order, and every stored image: a stretch of corrupt packets in the
middle of an episode is found only that way.

Frames that do not decode, and episodes whose video file is missing, are what training survives:
it skips them and counts them (:mod:`supernode.sample_guard`). Up to ``max_bad_share`` of the
dataset's frames they are warnings that say what will be skipped; past it, errors.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from supernode.dataset_checks.findings import Finding, error, warning

_TOLERANCE_S = 1e-4  # LeRobotDataset's default timestamp tolerance


@dataclass
class MediaResult:
    findings: list[Finding] = field(default_factory=list)
    decoded_frames: int = 0
    missing_episodes: set[int] = field(default_factory=set)


@dataclass
class _Bad:
    """Unreadable frames of one (file, key, episode)."""

    file: str
    key: str
    episode: int
    frames: set[int] = field(default_factory=set)
    reason: str = ""


def check_media(root: Path, meta, *, deep: bool, max_bad_share: float,
                video_backend: str = "pyav") -> MediaResult:
    result = MediaResult()
    episodes = list(meta.episodes)
    bad: dict[tuple[str, str, int], _Bad] = {}
    for key in meta.video_keys:
        by_file: dict[str, list[dict]] = {}
        for row in episodes:
            by_file.setdefault(str(meta.get_video_file_path(int(row["episode_index"]), key)),
                               []).append(row)
        for rel, rows in by_file.items():
            path = root / rel
            if not path.is_file():
                result.missing_episodes.update(int(r["episode_index"]) for r in rows)
                continue
            _scan_video(path, rel, key, rows, float(meta.fps), meta.features[key], deep,
                        bad, result)
            if deep:
                _probe_neighbours(path, rel, key, rows, float(meta.fps), video_backend, bad,
                                  result)
            else:
                _sample_decode(path, rel, key, rows, float(meta.fps), video_backend, bad,
                               result)
    for key in meta.image_keys:
        if deep:
            _check_images(root, meta, key, bad, result)
    _judge(root, meta, bad, result, max_bad_share)
    return result


def _judge(root: Path, meta, bad: dict, result: MediaResult, max_bad_share: float) -> None:
    """Unreadable frames and missing files: warnings within the share, errors past it."""
    lengths = {int(r["episode_index"]): int(r["length"]) for r in meta.episodes}
    total = max(sum(lengths.values()), 1)
    lost_frames = sum(lengths[e] for e in result.missing_episodes)
    # A frame is lost if any of its cameras is: count (episode, frame) pairs once.
    lost_pairs = {(b.episode, f) for b in bad.values() for f in b.frames
                  if b.episode not in result.missing_episodes}
    share = (lost_frames + len(lost_pairs)) / total
    within = share <= max_bad_share
    make = warning if within else error
    consequence = (
        f"training and evaluation will skip them ({share:.1%} of the frames, within "
        f"max-bad-sample-share={max_bad_share})" if within else
        f"{share:.1%} of the frames are unreadable, more than max-bad-sample-share="
        f"{max_bad_share}: every round of this site would fail"
    )
    missing: dict[tuple[str, str], list[int]] = {}
    for ep in sorted(result.missing_episodes):
        for key in meta.video_keys:
            rel = str(meta.get_video_file_path(ep, key))
            if not (root / rel).is_file():
                missing.setdefault((rel, key), []).append(ep)
    for (rel, key), eps in missing.items():
        shown = ", ".join(map(str, eps[:8])) + (", ..." if len(eps) > 8 else "")
        result.findings.append(make("video", f"video file missing: episodes {shown} "
                                    f"({sum(lengths[e] for e in eps)} frames); {consequence}",
                                    file=rel, episode=eps[0], key=key))
    for b in sorted(bad.values(), key=lambda b: (b.episode, b.key)):
        frames = sorted(b.frames)
        shown = ", ".join(map(str, frames[:8])) + (", ..." if len(frames) > 8 else "")
        result.findings.append(make("video" if b.file.endswith(".mp4") else "images",
                                    f"{len(frames)} frame(s) cannot be decoded (frames "
                                    f"{shown}): {b.reason}; {consequence}", file=b.file,
                                    episode=b.episode, frame=frames[0], key=b.key))


def _mark(bad: dict, rel: str, key: str, episode: int, frames: Iterable[int], reason: str):
    entry = bad.setdefault((rel, key, episode), _Bad(rel, key, episode))
    entry.frames.update(int(f) for f in frames)
    entry.reason = entry.reason or reason


class _Timeline:
    """Maps a time in a video file to (episode, frame) for the episodes stored in it."""

    def __init__(self, rows: list[dict], key: str, fps: float) -> None:
        self.fps = fps
        self.spans = sorted(
            (float(r[f"videos/{key}/from_timestamp"]), int(r["episode_index"]), int(r["length"]))
            for r in rows
        )
        self.starts = [s[0] for s in self.spans]

    def locate(self, t: float) -> tuple[int, int] | None:
        i = bisect.bisect_right(self.starts, t + 0.5 / self.fps) - 1
        if i < 0:
            return None
        start, episode, length = self.spans[i]
        frame = round((t - start) * self.fps)
        return (episode, frame) if 0 <= frame < length else None


def _scan_video(path: Path, rel: str, key: str, rows: list[dict], fps: float,
                feature: dict, deep: bool, bad: dict, result: MediaResult) -> None:
    """Read the file's packets (and, ``deep``, decode them all): every episode's frames there?"""
    import av

    seen: set[tuple[int, int]] = set()
    errors: list[str] = []
    timeline = _Timeline(rows, key, fps)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            base = stream.time_base
            for packet in container.demux(stream):
                if deep:
                    try:
                        for frame in packet.decode():
                            result.decoded_frames += 1
                            spot = timeline.locate(float(frame.pts * base))
                            if spot is not None:
                                seen.add(spot)
                                _check_shape(frame, rel, key, spot, feature, result)
                    except av.error.FFmpegError as err:
                        errors.append(f"{type(err).__name__}: {err}")
                elif packet.pts is not None and packet.size:
                    spot = timeline.locate(float(packet.pts * base))
                    if spot is not None:
                        seen.add(spot)
    except av.error.FFmpegError as err:  # the container itself: truncated, not a video
        reason = f"{type(err).__name__}: {err}"
        for row in rows:
            ep = int(row["episode_index"])
            _mark(bad, rel, key, ep, (f for f in range(int(row["length"])) if (ep, f) not in
                                      seen), reason)
        return
    reason = errors[0] if errors else ("frame missing from the video" if not deep else
                                       "frame does not decode")
    for row in rows:
        ep = int(row["episode_index"])
        missing = [f for f in range(int(row["length"])) if (ep, f) not in seen]
        if missing:
            _mark(bad, rel, key, ep, missing, reason)


def _check_shape(frame, rel: str, key: str, spot: tuple[int, int], feature: dict,
                 result: MediaResult) -> None:
    shape = list(feature["shape"])
    h, w = (shape[0], shape[1]) if shape[-1] == 3 else (shape[1], shape[2])
    if (frame.height, frame.width) != (h, w) and not any(
        f.check == "video" and f.key == key and "resolution" in f.message
        for f in result.findings
    ):
        result.findings.append(error("video", f"frames are {frame.height}x{frame.width}, "
                                     f"meta/info.json says {h}x{w} (resolution)", file=rel,
                                     episode=spot[0], frame=spot[1], key=key))


def _sample_decode(path: Path, rel: str, key: str, rows: list[dict], fps: float,
                   backend: str, bad: dict, result: MediaResult) -> None:
    """First, middle and last frame of each episode through LeRobot's decoder."""
    from lerobot.datasets.video_utils import decode_video_frames

    for row in rows:
        ep, length = int(row["episode_index"]), int(row["length"])
        start = float(row[f"videos/{key}/from_timestamp"])
        for frame in sorted({0, length // 2, length - 1}):
            try:
                decode_video_frames(path, [start + frame / fps], _TOLERANCE_S, backend)
                result.decoded_frames += 1
            except Exception as err:  # PyAV, FrameTimestampError, ...
                _mark(bad, rel, key, ep, [frame], f"{type(err).__name__}: {err}"[:200])


def _probe_neighbours(path: Path, rel: str, key: str, rows: list[dict], fps: float,
                      backend: str, bad: dict, result: MediaResult, reach: int = 3) -> None:
    """Frames next to damage, through LeRobot's decoder: it seeks to a keyframe and decodes
    forward, so a frame just before or after a corrupt stretch (even in the next episode of
    the same file) can fail there although a sequential decode got it."""
    from lerobot.datasets.video_utils import decode_video_frames

    order = sorted(
        (float(r[f"videos/{key}/from_timestamp"]) + f / fps, int(r["episode_index"]), f)
        for r in rows for f in range(int(r["length"]))
    )
    marked = {(b.episode, f) for b in bad.values() if b.file == rel for f in b.frames}
    near = {j for i, (_, ep, f) in enumerate(order) if (ep, f) in marked
            for j in range(i - reach, i + reach + 1) if 0 <= j < len(order)}
    for j in sorted(near):
        t, ep, f = order[j]
        if (ep, f) in marked:
            continue
        try:
            decode_video_frames(path, [t], _TOLERANCE_S, backend)
            result.decoded_frames += 1
        except Exception as err:  # PyAV, FrameTimestampError, ...
            _mark(bad, rel, key, ep, [f], f"{type(err).__name__}: {err}"[:200])


def _check_images(root: Path, meta, key: str, bad: dict, result: MediaResult) -> None:
    """Every stored image of ``key`` decodes (images live in the data tables, as PNG bytes)."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    for path in sorted((root / "data").glob("*/*.parquet")):
        rel = str(path.relative_to(root))
        try:
            table = pq.read_table(path, columns=["episode_index", "frame_index", key])
        except Exception:  # reported by the table checks
            continue
        eps = table.column("episode_index").to_pylist()
        frames = table.column("frame_index").to_pylist()
        for ep, frame, cell in zip(eps, frames, table.column(key).to_pylist(), strict=True):
            try:
                data = cell.get("bytes") if isinstance(cell, dict) else None
                if data is None:
                    raise ValueError(f"no image bytes (path {cell.get('path')!r})"
                                     if isinstance(cell, dict) else "no image")
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                result.decoded_frames += 1
            except Exception as err:  # PIL raises many kinds
                _mark(bad, rel, key, int(ep), [int(frame)], f"{type(err).__name__}: {err}")
