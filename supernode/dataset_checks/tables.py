"""The data tables of a LeRobotDataset, row by row: indices, timestamps, values.

LeRobot finds a frame's neighbours (the action chunk, the video frame) by index arithmetic and
by timestamp, so a table whose frame indices skip, whose timestamps repeat or run backwards, or
whose timestamps are off the fps grid trains on the wrong frames without any error. Each problem
is reported once per episode and kind, at its first frame, with how many frames it touches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import features as feat
from supernode.dataset_checks.findings import Finding, error

_BOOKKEEPING = ("episode_index", "frame_index", "index", "timestamp")


def _episode_rows(meta) -> dict[int, dict]:
    return {int(row["episode_index"]): row for row in meta.episodes}


def check_tables(root: Path, meta) -> list[Finding]:
    """Every data file readable; every episode's rows consistent with the metadata and fps."""
    out: list[Finding] = []
    expected = _episode_rows(meta)
    numeric = feat.numeric_keys(feat.feature_spec(meta.features))
    seen: set[int] = set()
    unreadable: set[str] = set()
    paths = sorted((root / "data").glob("*/*.parquet"))
    if not paths:
        return [error("tables", "no data files (data/chunk-*/file-*.parquet)")]
    for path in paths:
        rel = str(path.relative_to(root))
        columns = _read(path, rel, numeric, out)
        if columns is None:
            unreadable.add(rel)
            continue
        episodes = columns["episode_index"]
        for ep in dict.fromkeys(episodes.tolist()):  # in order of appearance
            rows = np.flatnonzero(episodes == ep)
            ep = int(ep)
            if ep in seen:
                out.append(error("index", "episode's rows are split or repeated across data "
                                 "files", file=rel, episode=ep))
            seen.add(ep)
            if ep not in expected:
                out.append(error("index", "episode is in the table but not in meta/episodes",
                                 file=rel, episode=ep))
                continue
            out += _check_episode(rel, ep, expected[ep], float(meta.fps),
                                  {k: v[rows] for k, v in columns.items()}, numeric)
    for ep in sorted(set(expected) - seen):
        rel = str(meta.get_data_file_path(ep))
        if rel not in unreadable:  # already reported, with every episode in it
            out.append(error("index", f"episode listed in meta/episodes ({expected[ep]['length']}"
                             " frames) has no rows in the data files", episode=ep, file=rel))
    return out


def _read(path: Path, rel: str, numeric: list[str], out: list[Finding]):
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        names = [c for c in (*_BOOKKEEPING, *numeric) if c in schema.names]
        table = pq.read_table(path, columns=names)
    except Exception as err:  # ArrowInvalid, OSError, ...
        out.append(error("tables", f"unreadable data file ({type(err).__name__}: {err}); every "
                         "episode in it is lost", file=rel))
        return None
    missing = [c for c in _BOOKKEEPING if c not in table.column_names]
    if missing:
        out.append(error("tables", f"columns {missing} missing", file=rel))
        return None
    columns = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        values = np.asarray(col.flatten() if hasattr(col, "flatten") else col)
        columns[name] = values.reshape(len(col), -1) if name in numeric else values.reshape(-1)
    return columns


def _span(frames: np.ndarray) -> str:
    shown = ", ".join(str(int(f)) for f in frames[:5])
    return shown + (f", ... ({len(frames)} in all)" if len(frames) > 5 else "")


def _check_episode(rel: str, ep: int, meta_row: dict, fps: float,
                   cols: dict[str, np.ndarray], numeric: list[str]) -> list[Finding]:
    out: list[Finding] = []
    where = {"file": rel, "episode": ep}
    n = len(cols["frame_index"])
    length = int(meta_row["length"])
    if n != length:
        out.append(error("index", f"{n} rows, meta/episodes says {length} frames", **where))
    frames = cols["frame_index"].astype(np.int64)
    dup = np.flatnonzero(np.diff(np.sort(frames)) == 0)
    if len(dup):
        repeated = np.unique(np.sort(frames)[dup])
        out.append(error("index", f"duplicated frame_index: frames {_span(repeated)} appear "
                         "more than once (the same frame recorded twice)",
                         frame=int(repeated[0]), key="frame_index", **where))
    elif not np.array_equal(frames, np.arange(n)):
        bad = int(np.flatnonzero(frames != np.arange(n))[0])
        out.append(error("index", f"frame_index {int(frames[bad])} at row {bad} of the "
                         f"episode, expected {bad} (frame indices run 0..length-1 in order)",
                         frame=int(frames[bad]), key="frame_index", **where))
    index = cols["index"].astype(np.int64)
    first = int(meta_row["dataset_from_index"])
    if not np.array_equal(index, first + np.arange(n)):
        bad = int(np.flatnonzero(index != first + np.arange(n))[0])
        out.append(error("index", f"index {int(index[bad])}, expected {first + bad} (global "
                         "frame indices are consecutive from meta's dataset_from_index)",
                         frame=int(frames[bad]), key="index", **where))
    out += _check_timestamps(cols["timestamp"].astype(np.float64), frames, fps, where)
    for key in numeric:
        if key in cols:
            finite = np.isfinite(cols[key].astype(np.float64)).all(axis=1)
            if not finite.all():
                bad = np.flatnonzero(~finite)
                out.append(error("values", f"non-finite values (NaN/Inf) in frames "
                                 f"{_span(frames[bad])}: training would turn them into a NaN "
                                 "loss", frame=int(frames[bad[0]]), key=key, **where))
    return out


def _check_timestamps(ts: np.ndarray, frames: np.ndarray, fps: float,
                      where: dict) -> list[Finding]:
    out: list[Finding] = []
    step = np.diff(ts)
    same = np.flatnonzero(step == 0) + 1
    back = np.flatnonzero(step < 0) + 1
    if len(same):
        i = int(same[0])
        out.append(error("timestamps", f"duplicated timestamp {ts[i]:.4f} (the frame before "
                         f"has it too) at frames {_span(frames[same])}; expected "
                         f"{frames[i] / fps:.4f} = frame_index / fps, strictly increasing",
                         frame=int(frames[i]), key="timestamp", **where))
    if len(back):
        i = int(back[0])
        out.append(error("timestamps", f"timestamp goes back to {ts[i]:.4f} after "
                         f"{ts[i - 1]:.4f} at frames {_span(frames[back])}; timestamps must "
                         "increase within an episode", frame=int(frames[i]), key="timestamp",
                         **where))
    # LeRobot fetches neighbours by index and video frames by timestamp: off the fps grid by
    # half a frame or more, a sample's image and its action chunk come from different times.
    off = np.abs(ts - frames / fps)
    far = np.setdiff1d(np.flatnonzero(off >= 0.5 / fps), np.concatenate([same, back]))
    if len(far):
        i = int(far[0])
        out.append(error("timestamps", f"timestamp {ts[i]:.4f} is off the {fps:g} fps grid "
                         f"at frames {_span(frames[far])}; expected {frames[i] / fps:.4f} = "
                         "frame_index / fps", frame=int(frames[i]), key="timestamp", **where))
    return out
